"""Per-head localisation: every attention head's own word map scored alone, by word kind.

DAAM averages all heads; single heads differ widely in how well they localise. ``attnscope eval
--per-head`` scores each stored head's map (DAAM's aggregation over one head, DAAM's threshold
rule) against the same ground truth as the all-head map and reports the spread per word kind.

Example:
    >>> names = head_names(tc.daam())                                  # doctest: +SKIP
    >>> score_heads(tc.daam(), 0, [2], gt_mask)                        # doctest: +SKIP
    array([0.41, 0.07, ...])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..methods import binarize
from ..methods.base import threshold_map
from . import metrics


def stored_heads(result) -> list[tuple[int, str]]:
    """``(global head index, "layer/head")`` of every head the result stores, in global order."""
    heads = []
    for layer in result.layers:
        for local in result.head_index[layer.name]:
            heads.append((layer.head_offset + local, f"{layer.short_name}/{local}"))
    return heads


def head_names(result) -> list[str]:
    return [name for _, name in stored_heads(result)]


def score_heads(result, image: int, tokens: Sequence[int], gt: np.ndarray) -> np.ndarray:
    """IoU of each stored head's map of ``tokens`` in ``image`` (DAAM's threshold rule) with ``gt``."""
    scores = []
    with torch.no_grad():
        for head, _ in stored_heads(result):
            soft = result.raw_map(list(tokens), image, heads=[head])
            mask = threshold_map(soft, result.threshold_rule).numpy()
            scores.append(metrics.iou(mask, gt))
    return np.asarray(scores, dtype=np.float64)


def summarize_heads(pairs, method: str = "daam") -> dict:
    """Per word kind: each head's mIoU, the all-head map's mIoU (``method``), and the spread.

    ``pairs`` are :class:`attnscope.eval.runner.Pair` with ``heads`` and ``head_names`` filled.
    """
    scored = [p for p in pairs if p.heads is not None]
    if not scored:
        return {}
    names = list(scored[0].head_names)
    out = {}
    for kind in sorted({p.kind for p in scored}):
        members = [p for p in scored if p.kind == kind]
        per_head = np.mean([p.heads for p in members], axis=0)
        every = metrics.mean_iou([(binarize(method, p.soft[method]), p.gt) for p in members])
        order = np.argsort(-per_head, kind="stable")
        out[kind] = {"pairs": len(members), "all heads": round(float(every), 6),
                     "best head": names[order[0]], "best": round(float(per_head[order[0]]), 6),
                     "median": round(float(np.median(per_head)), 6),
                     "worst head": names[order[-1]], "worst": round(float(per_head[order[-1]]), 6),
                     "heads above all-head map": int((per_head > every).sum()),
                     "per head": {n: round(float(v), 6) for n, v in zip(names, per_head)}}
    return out


def heads_markdown(summary: dict) -> str:
    """The spread table of :func:`summarize_heads` as markdown."""
    n_heads = len(next(iter(summary.values()))["per head"]) if summary else 0
    lines = [f"Per-head mIoU ({n_heads} heads, each head's map alone, τ as the method's):", "",
             "| words | pairs | all heads | best head | median head | worst head | heads above all |",
             "|---|---:|---:|---|---:|---|---:|"]
    for kind, row in summary.items():
        lines.append(f"| {kind} | {row['pairs']} | {row['all heads']:.3f} | {row['best head']} {row['best']:.3f} | "
                     f"{row['median']:.3f} | {row['worst head']} {row['worst']:.3f} | "
                     f"{row['heads above all-head map']} |")
    return "\n".join(lines)
