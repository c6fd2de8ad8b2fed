"""Weight the flow loss towards the latent cells that hold objects (``train_mmdit --object-weight``).

The quality gate asks only whether each captioned object is drawn in its colour and shape, yet the
plain flow loss averages over every latent cell, and most cells are background (plain or textured).
ShapesWorld knows every object's exact mask, so the loss can spend more of its weight where the
gate looks: a cell that any object touches (after growing the masks by one pixel, so that edges
count) weighs ``W``, every other cell 1, and the weighted mean keeps the loss on the plain scale.

    cells = object_cells(run, seed=0, size=24_000, side=16, captions=captions)   # (N, 1, 16, 16) in {0, 1}
    loss = weighted_mse(pred, target, 1 + 2 * cells[index])                      # W = 3
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnscope.files import save_tensors

CELLS_FILE = "bank-objects.safetensors"


def scene_cells(scenes, side: int) -> torch.Tensor:
    """``(B, 1, side, side)`` float: 1 where a cell of the latent grid touches an object grown by one pixel."""
    union = torch.from_numpy(np.stack([scene.masks.any(0) for scene in scenes])).float()[:, None]
    grown = F.max_pool2d(union, kernel_size=3, stride=1, padding=1)
    return F.adaptive_max_pool2d(grown, side)


def object_cells(folder: Path, seed: int, size: int, side: int, captions: list[str], chunk: int | None = None) -> torch.Tensor:
    """Object cells of the ``size`` bank scenes of ``seed`` (``train.latent_bank``), cached in ``folder``.

    The scenes are drawn again from the bank's own random stream; their captions must equal the
    bank's, so a bank built otherwise is refused rather than paired with the wrong masks.
    """
    from safetensors.torch import load_file

    from .train import BANK_CHUNK, bank_scenes

    chunk = chunk or BANK_CHUNK
    path = folder / CELLS_FILE
    if path.is_file():
        cells = load_file(str(path))["cells"].float()
        if cells.shape == (size, 1, side, side):
            return cells
    parts = []
    for start in range(0, size, chunk):
        scenes = bank_scenes(seed, start, min(chunk, size - start), chunk)
        drawn = [scene.caption for scene in scenes]
        if drawn != captions[start:start + len(scenes)]:
            raise SystemExit(f"The bank in {folder} was not drawn from seed {seed}; rebuild it (no --bank-from) "
                             "to train with --object-weight.")
        parts.append(scene_cells(scenes, side))
    cells = torch.cat(parts).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({"cells": cells.half()}, path)
    return cells


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error with a per-cell weight broadcast over channels, divided by the total weight
    (all-ones weights give ``F.mse_loss`` exactly)."""
    weight = weight.expand_as(pred)
    return (weight * (pred - target).square()).sum() / weight.sum()
