"""Adapter for pipelines whose denoiser is a ``FluxTransformer2DModel`` (Flux.1 dev, schnell).

Joint attention runs on ``[text ; image]`` in the double-stream blocks (``transformer_blocks``, text
and image weights apart) and in the single-stream blocks (``single_transformer_blocks``, one
sequence) alike; both are traced. The text tokens are Flux's T5 positions, labelled by the T5
tokenizer (its CLIP encoder only gives the pooled vector). Flux is guidance-distilled: the
denoiser batch holds no unconditional half. Latents reach the transformer packed, each token a
``pack × pack`` square of latent pixels; the grid is read from the call's ``img_ids``.

Example:
    >>> with attnscope.trace(pipe, layers="single_transformer_blocks.*") as tc:   # doctest: +SKIP
    ...     pipe("a red circle", num_inference_steps=4)
    >>> tc.daam().word("circle").shape                                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from .mmdit import MMDiTAdapter


class FluxAdapter(MMDiTAdapter):
    family = "flux"
    description = "diffusers pipelines whose denoiser is a FluxTransformer2DModel (Flux.1)"
    image_first = False
    block_lists = ("transformer_blocks", "single_transformer_blocks")

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self._grid: tuple[int, int] | None = None

    @classmethod
    def supports(cls, pipe: Any) -> bool:
        from diffusers import FluxTransformer2DModel

        return isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel)

    def text_encoder(self):
        return getattr(self.pipe, "text_encoder_2", None), getattr(self.pipe, "tokenizer_2", None)

    def prompt_segments(self) -> list:
        from ..core.prompt import PromptSegment

        return [PromptSegment("t5", *self.text_encoder())]

    def uses_cfg(self) -> bool:
        return False

    def patch_size(self) -> int:
        """Latent pixels per side of one packed token: the pipeline's image-processor scale over the VAE's."""
        vae_scale = int(getattr(self.pipe, "vae_scale_factor", 1) or 1)
        processor = getattr(self.pipe, "image_processor", None)
        scale = getattr(getattr(processor, "config", None), "vae_scale_factor", None)
        return int(scale) // vae_scale if scale else 1

    def denoiser_inputs(self, args: tuple, kwargs: dict):
        sample = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        ids = kwargs.get("img_ids")
        if torch.is_tensor(ids):
            ids = ids[0] if ids.dim() == 3 else ids
            self._grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        timestep = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        if torch.is_tensor(timestep):
            timestep = float(timestep.flatten()[0]) if timestep.numel() else None
        return sample, (None if timestep is None else float(timestep))

    def latent_hw(self, sample: torch.Tensor) -> tuple[int, int]:
        """The unpacked latent's size: the token grid of the call's ``img_ids`` times the pack."""
        if self._grid is None:
            raise RuntimeError("The Flux transformer was called without img_ids; attnscope reads the image grid from them.")
        p = self.patch_size()
        return self._grid[0] * p, self._grid[1] * p

    def processor_hint(self) -> str:
        return ("call pipe.transformer.set_attn_processor(FluxAttnProcessor()) "
                "(from diffusers.models.transformers.transformer_flux) before tracing.")

    def encode_prompts(self, prompts: list[str], lengths: dict[str, int] | None = None) -> torch.Tensor:
        extra = {"max_sequence_length": lengths["t5"]} if lengths and "t5" in lengths else {}
        embeds, _, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=prompts, **extra)
        return embeds

    # -- the text stream: concept tokens sit at the text tokens' position ---------------------------------
    def block_conditioning(self, args: tuple, kwargs: dict) -> dict:
        rotary = kwargs["image_rotary_emb"] if "image_rotary_emb" in kwargs else (args[3] if len(args) > 3 else None)
        return {"temb": kwargs["temb"] if "temb" in kwargs else args[2], "rotary": rotary}

    def rotate_text_tokens(self, q: torch.Tensor, k: torch.Tensor, conditioning: dict):
        """Extra text-stream tokens take the rotary embedding of the first text position (Flux's
        pipelines give every text token the same position, ``txt_ids`` of zeros)."""
        rotary = conditioning.get("rotary")
        if rotary is None:
            return q, k
        from diffusers.models.embeddings import apply_rotary_emb

        first = tuple(r[:1] for r in rotary)
        return apply_rotary_emb(q, first, sequence_dim=1), apply_rotary_emb(k, first, sequence_dim=1)
