"""The HRV paper's published matrices (``.npy``), checked against a pipeline's heads before use.

The published files hold a float32 ``(concepts, heads)`` matrix; beside them, ``head_names_*.npy``
names each column (``"down, layer: 0, head: 3"``: down blocks, then mid, then up, layers counted
within each part in execution order) and ``concept_words_340.csv`` lists the concepts in row order
with their example words. A pipeline's own columns are named the same way from its adapter's
layers; any difference in count or order is refused.

Example:
    >>> hrv = load_published("hrv_sd_v1_4.npy", pipe)              # doctest: +SKIP
    >>> hrv.concepts[:2], hrv.matrix.shape                          # doctest: +SKIP
    (['Animals', 'Plants'], torch.Size([34, 128]))
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..control.hooks import model_layers
from .vectors import HeadRelevance

#: The published files' names for the parts of a UNet.
PART_NAMES = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
#: The published concept list beside the matrices.
CONCEPTS_FILE = "concept_words_340.csv"


def published_head_names(layers) -> list[str]:
    """The published files' column names for ``layers`` (in global head order)."""
    names, within = [], {}
    for layer in layers:
        part = PART_NAMES.get(layer.block or layer.name.split(".")[0], layer.name.split(".")[0])
        n = within.get(part, 0)
        within[part] = n + 1
        names += [f"{part}, layer: {n}, head: {h}" for h in range(layer.heads)]
    return names


def read_concept_words(path: str | os.PathLike) -> dict[str, list[str]]:
    """The published CSV of concepts (a heading line, then numbered words ``1. Dog``)."""
    concepts: dict[str, list[str]] = {}
    current = None
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        line = line.strip().strip(",").strip('"')
        if not line:
            continue
        numbered = re.match(r"^\d+\.\s*(.+)$", line)
        if numbered and current is not None:
            concepts[current].append(numbered.group(1).strip())
        else:
            current = line
            concepts[current] = []
    return concepts


def load_published(path: str | os.PathLike, pipe: Any, *, head_names: str | os.PathLike | None = None,
                   concepts: str | os.PathLike | list[str] | None = None, clamp: float | None = None) -> HeadRelevance:
    """Load a published HRV matrix for ``pipe`` (any object an adapter supports, e.g. a meta-device UNet).

    Args:
        path: ``hrv_*.npy``, float ``(concepts, heads)``.
        head_names: the column names file (default: ``head_names_<same suffix>.npy`` beside ``path``);
            when present, the pipeline's heads must match it name by name.
        concepts: the concepts CSV (default: ``concept_words_340.csv`` beside ``path``) or a list of names.
        clamp: upper bound for edits (the paper clamps SDXL's at 9: ``PAPER_SDXL_CLAMP``).
    """
    path = Path(path)
    matrix = np.load(path, allow_pickle=False)
    if matrix.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {matrix.shape}; an HRV file is (concepts, heads).")
    _, found = model_layers(pipe)
    layers = [info for info, _ in found]
    ours = published_head_names(layers)
    if matrix.shape[1] != len(ours):
        raise ValueError(f"{path.name} has {matrix.shape[1]} heads but the pipeline has {len(ours)} "
                         "cross-attention heads; load the file published for this model.")
    names_path = Path(head_names) if head_names else path.with_name(path.name.replace("hrv_", "head_names_", 1))
    if names_path.is_file():
        theirs = [str(n) for n in np.load(names_path, allow_pickle=False)]
        if len(theirs) != len(ours):
            raise ValueError(f"{names_path.name} names {len(theirs)} heads but the pipeline has {len(ours)}; "
                             "use the head names published with this matrix.")
        wrong = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
        if wrong is not None:
            raise ValueError(f"Head order differs from the pipeline's at column {wrong}: the file has "
                             f"{theirs[wrong]!r}, the pipeline {ours[wrong]!r} ({len(theirs)} heads in both); "
                             "load the file published for this model.")
    words: dict[str, list[str]] = {}
    if isinstance(concepts, (list, tuple)):
        names = [str(c) for c in concepts]
    else:
        csv = Path(concepts) if concepts else path.with_name(CONCEPTS_FILE)
        words = read_concept_words(csv) if csv.is_file() else {}
        names = list(words) if words else [f"concept {i}" for i in range(matrix.shape[0])]
    if len(names) != matrix.shape[0]:
        raise ValueError(f"{path.name} has {matrix.shape[0]} concepts but {len(names)} names were given.")
    heads = [(l.name, h) for l in layers for h in range(l.heads)]
    meta = {"source": path.name, "published": True}
    return HeadRelevance(matrix=torch.from_numpy(matrix.astype(np.float32)), concepts=names, heads=heads,
                         words=words, clamp=clamp, meta=meta)
