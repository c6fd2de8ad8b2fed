"""Representation alignment (REPA) for the tiny MM-DiT, with the ShapesWorld UNet as the frozen encoder.

A small transformer learns image structure slowly: without convolutions, every token must learn
from attention alone where its object's edges are. REPA (Yu et al., 2024, "Representation
Alignment for Generation") adds a loss that pulls the transformer's image tokens after one block,
through a small MLP, towards a pretrained encoder's features of the *clean* image. Here the
encoder is the ShapesWorld UNet (ours, trained on the same scenes): the output of its last
up-path cross-attention block at the transformer's token-grid resolution, with the scene's caption,
at a light noise level. The MLP is trained with the transformer and dropped at export, so the
exported pipeline is a stock SD3 folder.

    python -m training.train_mmdit --out runs/mmdit --repa 0.5 --repa-block 2   # the defaults

Example:
    >>> targets = teacher_features(WEIGHTS / "shapes-unet", latents, captions, tokenizer, grid=8)  # doctest: +SKIP
    >>> with BlockTap(transformer, 2) as tap: ...                                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from attnscope.files import save_tensors

from . import architectures as arch
from .errors import TrainingError

#: the UNet sees each clean scene noised to this training timestep (of 1000) when its features are read
FEATURE_TIMESTEP = 100
PROJECTOR_WIDTH = 256


def _feature_module(unet, grid: int):
    """The UNet's last up-path cross-attention block whose output is ``grid × grid``."""
    shapes: dict = {}
    handles = [attn.register_forward_hook(lambda m, a, out, key=(i, j): shapes.__setitem__(key, out[0].shape[-1]))
               for i, block in enumerate(unet.up_blocks) for j, attn in enumerate(getattr(block, "attentions", None) or [])]
    try:
        size = unet.config.sample_size
        with torch.no_grad():
            unet(torch.zeros(1, unet.config.in_channels, size, size, device=unet.device), 0,
                 encoder_hidden_states=torch.zeros(1, 1, unet.config.cross_attention_dim, device=unet.device))
    finally:
        for handle in handles:
            handle.remove()
    matching = [key for key, width in shapes.items() if width == grid]
    if not matching:
        raise TrainingError(f"The UNet has no up-path attention block at {grid}×{grid} (it has {sorted(set(shapes.values()))}); "
                            "pass --repa-from a ShapesWorld UNet folder such as the shipped shapes-unet.")
    i, j = max(matching)
    return unet.up_blocks[i].attentions[j]


def teacher_features(teacher: Path, latents: torch.Tensor, captions: list, tokenizer, grid: int, seed: int = 0,
                     chunk: int = 64, device="cpu") -> torch.Tensor:
    """Frozen UNet features of every bank scene, ``(n, grid * grid, channels)`` in float16, tokens in raster order."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    teacher = Path(teacher)
    unet = UNet2DConditionModel.from_pretrained(teacher / "unet", torch_dtype=torch.float32).eval()
    text_encoder = CLIPTextModel.from_pretrained(teacher / "text_encoder", dtype=torch.float32).eval()
    unet.to(device)
    text_encoder.to(device)
    alpha_bar = DDIMScheduler.from_pretrained(teacher / "scheduler").alphas_cumprod[FEATURE_TIMESTEP]
    module, captured = _feature_module(unet, grid), []
    handle = module.register_forward_hook(lambda m, a, out: captured.append(out[0].flatten(2).transpose(1, 2).half().cpu()))
    try:
        with torch.no_grad():
            for start in range(0, len(latents), chunk):
                x0 = latents[start:start + chunk]
                ids = arch.token_ids(tokenizer, captions[start:start + chunk])
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + start))
                noisy = (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise).to(device)
                unet(noisy, FEATURE_TIMESTEP, encoder_hidden_states=text_encoder(ids.to(device))[0])
                if (start // chunk) % 50 == 0:
                    print(f"repa features {start + len(x0)}/{len(latents)}", flush=True)
    finally:
        handle.remove()
    return torch.cat(captured)


def cached_teacher_features(folder: Path, teacher: Path, latents, captions, tokenizer, grid: int, seed: int,
                            device="cpu") -> torch.Tensor:
    """:func:`teacher_features`, computed once and cached in ``folder/repa.safetensors`` (+ ``repa.json``).

    ``latents`` are the scenes in the teacher's latent space, or a function that makes them (called
    only when the cache is missing: a run whose VAE differs from the teacher's encodes them anew).
    """
    from safetensors.torch import load_file

    path, meta_path = folder / "repa.safetensors", folder / "repa.json"
    meta = {"teacher": str(teacher), "grid": grid, "scenes": len(captions), "seed": seed, "timestep": FEATURE_TIMESTEP}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return load_file(str(path))["features"]
    latents = latents() if callable(latents) else latents
    features = teacher_features(teacher, latents, captions, tokenizer, grid, seed, device=device)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({"features": features.contiguous()}, path)
    meta_path.write_text(json.dumps(meta))
    return features


def projector(width: int, target_width: int) -> torch.nn.Module:
    """REPA's MLP from the transformer's width to the teacher's feature width (trained, then dropped)."""
    return torch.nn.Sequential(torch.nn.Linear(width, PROJECTOR_WIDTH), torch.nn.SiLU(),
                               torch.nn.Linear(PROJECTOR_WIDTH, PROJECTOR_WIDTH), torch.nn.SiLU(),
                               torch.nn.Linear(PROJECTOR_WIDTH, target_width))


class BlockTap:
    """Keeps the image tokens that joint block ``index`` outputs, while the context is open.

    Example:
        >>> with BlockTap(transformer, 2) as tap:        # doctest: +SKIP
        ...     transformer(latents, ...); tap.hidden.shape
    """

    def __init__(self, transformer, index: int):
        blocks = transformer.transformer_blocks
        if not 0 <= index < len(blocks):
            raise TrainingError(f"--repa-block {index} is not a block of this transformer; pass 0 to {len(blocks) - 1}.")
        self.block, self.hidden, self.handle = blocks[index], None, None

    def _keep(self, module, args, output):
        self.hidden = output[1]

    def __enter__(self):
        self.handle = self.block.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.hidden = None


def alignment_loss(hidden: torch.Tensor, target: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """REPA's loss: 1 − mean cosine similarity between the projected tokens ``head(hidden)`` and the
    teacher's features ``target`` ``(batch, tokens, channels)``."""
    return 1 - F.cosine_similarity(head(hidden), target.to(hidden.dtype), dim=-1).mean()
