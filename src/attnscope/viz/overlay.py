"""Heat-map overlays without matplotlib: a jet-like colour ramp blended onto the image.

Example:
    >>> import numpy as np, torch
    >>> img = overlay(np.zeros((4, 4, 3), np.uint8), torch.rand(4, 4))
    >>> img.size
    (4, 4)
"""

from __future__ import annotations

import numpy as np


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with a jet-like ramp (blue → cyan → yellow → red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def overlay(image, heat, alpha: float = 0.55):
    """Blend ``heat`` (H, W in [0, 1], tensor or array) onto ``image`` (PIL or H×W×3 uint8)."""
    from PIL import Image

    base = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    heat = heat.detach().cpu().float().numpy() if hasattr(heat, "detach") else np.asarray(heat, np.float32)
    if heat.shape != base.shape[:2]:
        raise ValueError(f"Heat map {heat.shape} and image {base.shape[:2]} differ in size.")
    colored = colorize(heat).astype(np.float32)
    mixed = (1 - alpha) * base + alpha * colored
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))
