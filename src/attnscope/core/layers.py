"""Metadata of the attention layers a trace reads, and the global head index.

Layer names are the diffusers module paths (``down_blocks.1.attentions.0.transformer_blocks.0.attn2``).
Adapters list layers in execution order (down, mid, up for a UNet); the *global head index*
numbers every head of every traced layer in that order, so head ``g`` of a model is
``layers[i].head_offset + h``. SD 1.x has 16 cross-attention layers × 8 heads = 128 heads.

Example:
    >>> layer = LayerInfo(name="mid_block.attentions.0.transformer_blocks.0.attn2", index=0, heads=8, factor=8)
    >>> layer.short_name
    'mid0.0.attn2'
    >>> LayerInfo(name="single_transformer_blocks.3.attn", index=0, heads=24).short_name   # Flux
    'single3.attn'
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence


@dataclass
class LayerInfo:
    """One traced attention layer.

    Attributes:
        name: diffusers module path of the attention module.
        index: position in execution order among the traced layers.
        heads: number of attention heads.
        factor: spatial down-sampling of this layer relative to the latent (1, 2, 4, …), or 0
            until the first call tells it.
        head_offset: global index of this layer's head 0.
        height, width: the layer's pixel grid in the last traced call (0 until seen).
    """

    name: str
    index: int
    heads: int
    factor: int = 0
    head_offset: int = 0
    height: int = 0
    width: int = 0
    block: str = field(default="")

    @property
    def short_name(self) -> str:
        parts = self.name.split(".")
        compact = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid",
                   "transformer_blocks": "joint", "single_transformer_blocks": "single"}
        head = compact.get(parts[0], parts[0])
        numbers = [p for p in parts[1:] if p.isdigit()]
        return f"{head}{'.'.join(numbers)}.{parts[-1]}"

    def to_dict(self) -> dict:
        return asdict(self)


def assign_head_offsets(layers: Sequence[LayerInfo]) -> int:
    """Number the heads of ``layers`` globally in order; returns the total head count."""
    offset = 0
    for i, layer in enumerate(layers):
        layer.index = i
        layer.head_offset = offset
        offset += layer.heads
    return offset


def select_layers(
    layers: Sequence[LayerInfo], names: Iterable[str] | str | None = None
) -> list[LayerInfo]:
    """Keep layers whose name or short name matches any of ``names`` (glob patterns allowed).

    >>> ls = [LayerInfo("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 0, 2)]
    >>> [l.index for l in select_layers(ls, "down_blocks.*")]
    [0]
    """
    if names is None:
        return list(layers)
    if isinstance(names, str):
        names = [names]
    names = list(names)
    chosen = [
        layer
        for layer in layers
        if any(fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.short_name, p) for p in names)
    ]
    unmatched = [
        p
        for p in names
        if not any(fnmatch.fnmatchcase(l.name, p) or fnmatch.fnmatchcase(l.short_name, p) for l in layers)
    ]
    if unmatched:
        known = ", ".join(l.name for l in layers)
        raise ValueError(f"No attention layer matches {unmatched}; the traced layers are: {known}")
    return chosen
