"""Adapter for pipelines whose denoiser is a ``UNet2DConditionModel`` (SD 1.x, 2.x, XL).

Traced layers are the cross-attention modules (``attn2``) of every transformer block, ordered
down blocks, mid block, up blocks — the order a forward pass runs them in and the order of the
global head index. SDXL's two text encoders share one CLIP tokenisation, so the first encoder's
ids (or the second's, for a refiner that has only that one) define the tokens.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..core.layers import LayerInfo
from .base import Adapter

_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def _execution_key(name: str) -> tuple:
    parts = name.split(".")
    numbers = tuple(int(p) for p in parts if p.isdigit())
    return (_BLOCK_ORDER.get(parts[0], 3),) + numbers


class UNetAdapter(Adapter):
    family = "unet"
    description = "diffusers pipelines whose denoiser is a UNet2DConditionModel (Stable Diffusion 1.x, 2.x, XL)"

    @classmethod
    def supports(cls, pipe: Any) -> bool:
        from diffusers import UNet2DConditionModel

        return isinstance(getattr(pipe, "unet", None), UNet2DConditionModel)

    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    def attention_layers(self) -> list[tuple[LayerInfo, torch.nn.Module]]:
        found = []
        for name, module in self.pipe.unet.named_modules():
            if getattr(module, "is_cross_attention", False) and re.search(r"\.attn2$", name):
                block = name.split(".")[0]
                found.append((LayerInfo(name=name, index=0, heads=int(module.heads), block=block), module))
        found.sort(key=lambda item: _execution_key(item[0].name))
        return found

    def text_encoder(self):
        encoder = getattr(self.pipe, "text_encoder", None)
        if encoder is not None:
            return encoder, self.pipe.tokenizer
        return getattr(self.pipe, "text_encoder_2", None), getattr(self.pipe, "tokenizer_2", None)

    def layer_grid(self, layer: LayerInfo, pixels: int, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
        """The UNet halves each side with stride-2 convolutions (``ceil(n / 2)``), so a layer's grid is
        found by halving the latent shape until its area matches — never from ``sqrt(pixels)``.

        >>> UNetAdapter.layer_grid(None, None, 96 * 64 // 4, (96, 64))
        (48, 32, 2)
        """
        h, w = latent_hw
        factor = 1
        while h * w > pixels and (h > 1 or w > 1):
            h, w, factor = math.ceil(h / 2), math.ceil(w / 2), factor * 2
        if h * w != pixels:
            raise ValueError(
                f"An attention layer has {pixels} query positions, which is no down-sampling of the "
                f"{latent_hw[0]}x{latent_hw[1]} latent; this denoiser needs its own adapter."
            )
        return h, w, factor

    def size_multiple(self) -> int:
        """diffusers' SD pipelines require multiples of 8 (their ``check_inputs``), and whole latent
        pixels; the UNet itself takes any latent size (odd sizes are up-sampled back to match)."""
        return math.lcm(8, int(getattr(self.pipe, "vae_scale_factor", 8) or 8))

    def processor_hint(self) -> str:
        return ("call pipe.unet.set_attn_processor(AttnProcessor2_0()) (from diffusers.models.attention_processor) "
                "before tracing.")

    def denoiser_inputs(self, args: tuple, kwargs: dict):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if torch.is_tensor(timestep):
            timestep = float(timestep.flatten()[0]) if timestep.numel() else None
        return sample, (None if timestep is None else float(timestep))

    # -- one denoising pass on given latents -------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        # SDXL's VAE overflows in float16 (its config says force_upcast): encode in float32, as its pipeline decodes
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        dtype = torch.float32 if upcast else vae.dtype
        with torch.no_grad():
            if upcast:
                vae.to(torch.float32)
            try:
                latents = vae.encode(pixels.to(device=vae.device, dtype=dtype)).latent_dist.mean
            finally:
                if upcast:
                    vae.to(torch.float16)
        return (latents * vae.config.scaling_factor).to(self.pipe.unet.dtype)

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, level: float):
        scheduler = self.pipe.scheduler
        timestep = int(round(level * (scheduler.config.num_train_timesteps - 1)))
        steps = torch.full((latents.shape[0],), timestep, device=latents.device)
        return scheduler.add_noise(latents, noise.to(latents), steps), timestep

    def condition(self, prompts: list[str]) -> dict:
        device = self.pipe.unet.device
        with torch.no_grad():
            if getattr(self.pipe, "text_encoder_2", None) is None:
                embeds, _ = self.pipe.encode_prompt(prompts, device, 1, False)
                return {"encoder_hidden_states": embeds}
            # SDXL: both encoders' penultimate states, and the second's pooled projection for the added conditioning
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled": pooled}

    def unet_kwargs(self, condition: dict, latent_hw: tuple[int, int]) -> dict:
        """The UNet's conditioning for latents of ``latent_hw``: the prompt states, and for SDXL the
        added text-time conditioning its pipeline passes by default (original = target = the image
        size, no crop)."""
        kwargs = {"encoder_hidden_states": condition["encoder_hidden_states"]}
        pooled = condition.get("pooled")
        if pooled is not None:
            size = self.image_hw(latent_hw)
            projection = int(self.pipe.text_encoder_2.config.projection_dim)
            time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=pooled.dtype,
                                                   text_encoder_projection_dim=projection)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled,
                                           "time_ids": time_ids.to(pooled.device).repeat(pooled.shape[0], 1)}
        return kwargs

    def denoise_call(self, noisy: torch.Tensor, timestep, condition: dict) -> None:
        with torch.no_grad():
            self.pipe.unet(noisy, timestep, **self.unet_kwargs(condition, self.latent_hw(noisy)))
