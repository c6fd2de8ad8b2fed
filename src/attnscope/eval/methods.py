"""Attribution methods as the segmentation benchmark sees them: a name, a soft map, a binarisation.

A method turns a traced result and a word's token positions into a soft map at image size, and
says how its soft map becomes a mask. Later methods (selective heads, ConceptAttention) register
here and join the same tables.

Example:
    >>> method = get_method("daam")
    >>> method.name, method.threshold
    ('daam', 0.4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: soft_map(result, image index, token positions) -> (H, W) float array, larger = more attributed
SoftMap = Callable[[object, int, list], np.ndarray]


@dataclass(frozen=True)
class MapMethod:
    name: str
    soft_map: SoftMap
    threshold: float
    threshold_rule: str  # "relative_max": map >= τ·max (DAAM eq. 7); "mean": map > mean (ConceptAttention)

    def binarize(self, soft: np.ndarray, threshold: float | None = None) -> np.ndarray:
        tau = self.threshold if threshold is None else threshold
        if self.threshold_rule == "relative_max":
            return soft >= tau * soft.max()
        if self.threshold_rule == "mean":
            return soft > soft.mean()
        raise ValueError(f"Unknown threshold rule {self.threshold_rule!r}.")


_METHODS: dict[str, MapMethod] = {}


def register_method(method: MapMethod) -> MapMethod:
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> MapMethod:
    if name not in _METHODS:
        raise KeyError(f"Unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)


def _daam_soft(result, image: int, positions: list) -> np.ndarray:
    with torch.no_grad():
        return result.token_map(positions, image).clamp_min(0).numpy()


register_method(MapMethod("daam", _daam_soft, threshold=0.4, threshold_rule="relative_max"))
