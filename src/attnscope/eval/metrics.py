"""Segmentation-style metrics for word heat maps (pure numpy).

All functions take arrays of identical shape; boolean inputs are masks, float
inputs are soft maps (higher = more likely to belong to the word).

Example:
    >>> import numpy as np
    >>> gt = np.zeros((4, 4), bool); gt[:2] = True
    >>> iou(gt, gt), average_precision(gt.astype(float), gt)
    (1.0, 1.0)
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

POOLINGS = ("per_pair", "pooled")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(|pred & gt|, |pred | gt|) of two boolean masks.

    Example:
        >>> intersection_union(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool))
        (1, 3)
    """
    p, g = _pair(pred, gt)
    p, g = p.astype(bool), g.astype(bool)
    return int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())


def iou(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> float:
    """Intersection over union of two boolean masks; ``empty`` when both are empty.

    Example:
        >>> iou(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool))
        0.3333333333333333
    """
    inter, union = intersection_union(pred, gt)
    return float(empty) if union == 0 else inter / union


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels where the boolean masks agree.

    Example:
        >>> pixel_accuracy(np.array([1, 0, 0, 1], bool), np.array([1, 0, 1, 1], bool))
        0.75
    """
    p, g = _pair(pred, gt)
    return float((p.astype(bool) == g.astype(bool)).mean()) if p.size else float("nan")


def average_precision(soft: np.ndarray, gt: np.ndarray) -> float:
    """Average precision of ranking pixels by ``soft`` against the mask ``gt``.

    Step-wise area under the precision-recall curve (the scikit-learn
    definition, no interpolation): with one threshold per *distinct* score,
    taken in decreasing order, ``AP = sum_n (R_n - R_{n-1}) * P_n`` where
    ``P_n``/``R_n`` are precision/recall of predicting ``soft >= t_n``, and
    ``R_0 = 0``. Tied scores enter together. Returns NaN when ``gt`` is empty.
    A perfect map gives 1; a constant map gives the positive fraction.

    Example:
        >>> average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0], bool))
        0.8333333333333333
    """
    s, g = _pair(soft, gt)
    s = s.astype(np.float64).ravel()
    g = g.astype(bool).ravel()
    n_pos = int(g.sum())
    if n_pos == 0:
        return float("nan")
    if np.isnan(s).any():
        raise ValueError("soft map contains NaN")
    order = np.argsort(-s, kind="mergesort")
    s, g = s[order], g[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie block
    tp = np.cumsum(g)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _as_pairs(pairs: Iterable) -> list[tuple[np.ndarray, np.ndarray]]:
    out = [(np.asarray(p), np.asarray(g)) for p, g in pairs]
    if not out:
        raise ValueError("no (pred, gt) pairs given")
    return out


def mean_iou(pairs: Iterable, pooling: str = "per_pair", empty: float = 1.0) -> float:
    """IoU over many (pred_mask, gt_mask) pairs, e.g. one pair per (image, word).

    pooling:
        ``"per_pair"`` -- the arithmetic mean of the IoU of every pair; each
            pair counts equally whatever its size (a pair whose masks are
            both empty contributes ``empty``).
        ``"pooled"`` -- sum of all intersections divided by sum of all unions
            (a.k.a. cumulative / dataset IoU); large objects weigh more.
            ``empty`` when every union is empty.

    Example:
        >>> big = np.array([1, 1, 1, 1, 0, 0], bool)
        >>> miss_a = np.array([0, 0, 0, 0, 1, 0], bool); miss_b = np.array([0, 0, 0, 0, 0, 1], bool)
        >>> pairs = [(big, big), (miss_a, miss_b)]
        >>> mean_iou(pairs), round(mean_iou(pairs, pooling="pooled"), 4)
        (0.5, 0.6667)
    """
    ps = _as_pairs(pairs)
    if pooling == "per_pair":
        return float(np.mean([iou(p, g, empty) for p, g in ps]))
    if pooling == "pooled":
        inter = union = 0
        for p, g in ps:
            i, u = intersection_union(p, g)
            inter, union = inter + i, union + u
        return float(empty) if union == 0 else inter / union
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def mean_average_precision(pairs: Iterable) -> float:
    """Mean of :func:`average_precision` over (soft_map, gt_mask) pairs, skipping
    pairs whose ground truth is empty (NaN when all are).

    Example:
        >>> gt = np.array([0, 1, 1, 0], bool)
        >>> mean_average_precision([(gt.astype(float), gt), (np.ones(4), gt)])
        0.75
    """
    aps = [average_precision(s, g) for s, g in _as_pairs(pairs)]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")
