"""Adapter for pipelines whose denoiser is a ``UNet2DConditionModel`` (SD 1.x, 2.x, XL).

Traced layers are the cross-attention modules (``attn2``) of every transformer block, ordered
down blocks, mid block, up blocks — the order a forward pass runs them in and the order of the
global head index. SDXL's two text encoders share one CLIP tokenisation, so the first encoder's
ids (or the second's, for a refiner that has only that one) define the tokens.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..core.layers import LayerInfo
from . import register_adapter
from .base import Adapter

_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def _execution_key(name: str) -> tuple:
    parts = name.split(".")
    numbers = tuple(int(p) for p in parts if p.isdigit())
    return (_BLOCK_ORDER.get(parts[0], 3),) + numbers


@register_adapter
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

    def denoiser_inputs(self, args: tuple, kwargs: dict):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if torch.is_tensor(timestep):
            timestep = float(timestep.flatten()[0]) if timestep.numel() else None
        return sample, (None if timestep is None else float(timestep))
