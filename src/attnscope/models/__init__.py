"""Tiny text-to-image models trained on ShapesWorld and shipped inside the package.

``default_model_dir()`` is the folder the CLI uses when no ``--model`` is given (``shapes-unet``,
Stable Diffusion layout); ``WEIGHTS / "shapes-mmdit"`` holds the SD3-layout MM-DiT.

Example:
    >>> default_model_dir().name  # doctest: +SKIP
    'shapes-unet'
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL = "shapes-unet"


def default_model_dir() -> Path | None:
    path = WEIGHTS / DEFAULT_MODEL
    return path if (path / "model_index.json").is_file() else None
