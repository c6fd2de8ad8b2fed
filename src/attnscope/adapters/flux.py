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
        self._prompt: int | None = None  # the text features of the last call read (their storage)

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

    def is_extra_call(self, args: tuple, kwargs: dict, timestep, previous) -> bool:
        """True CFG calls the transformer a second time at the same timestep with the negative
        prompt's features: same timestep, other text features (one-pass noise draws keep theirs)."""
        text = kwargs.get("encoder_hidden_states")
        prompt = text.data_ptr() if torch.is_tensor(text) else None
        extra = previous is not None and timestep == previous and prompt != self._prompt
        if not extra:
            self._prompt = prompt
        return extra

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

    # -- one denoising pass on given images ---------------------------------------------------------------
    def condition(self, prompts: list[str]) -> dict:
        """Prompt inputs, and the guidance the pipeline applies by default (guidance-distilled models)."""
        import inspect

        with torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(prompt=prompts, prompt_2=prompts)
        condition = {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}
        if self.pipe.transformer.config.guidance_embeds:
            scale = inspect.signature(type(self.pipe).__call__).parameters["guidance_scale"].default
            condition["guidance"] = torch.full((embeds.shape[0],), float(scale), device=embeds.device)
        return condition

    def pack_latents(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, img_ids)``: latents ``(n, c, h, w)`` cut into ``pack × pack`` squares, row-major,
        each flattened channel-major, and every token's ``(0, row, column)``."""
        n, c, h, w = latents.shape
        p = self.patch_size()
        squares = latents.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        tokens = squares.reshape(n, (h // p) * (w // p), c * p * p)
        rows, cols = torch.meshgrid(torch.arange(h // p), torch.arange(w // p), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(latents)
        return tokens, img_ids

    def denoise_call(self, noisy: torch.Tensor, sigma: float, condition: dict) -> None:
        """Pack ``noisy`` ``(n, c, h, w)`` into ``pack × pack`` tokens (row-major, as the pipelines do)
        with their ``img_ids``, and call the transformer at ``t = σ``."""
        n = noisy.shape[0]
        tokens, img_ids = self.pack_latents(noisy)
        extra = dict(condition)
        if "guidance" in extra:
            extra["guidance"] = extra["guidance"].to(noisy)
        t = torch.full((n,), sigma, device=noisy.device, dtype=noisy.dtype)
        with torch.no_grad():
            self.pipe.transformer(hidden_states=tokens, timestep=t, img_ids=img_ids, return_dict=False, **extra)

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
