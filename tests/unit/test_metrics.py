import numpy as np
import pytest

from attnscope.eval.metrics import (average_precision, iou, mean_average_precision, mean_iou,
                                    pixel_accuracy)


def _ap_bruteforce(soft, gt):
    """Reference: precision at each positive's rank, ties resolved as a block."""
    soft, gt = soft.ravel(), gt.ravel()
    total = 0.0
    prev_recall = 0.0
    for t in sorted(set(soft.tolist()), reverse=True):
        pred = soft >= t
        tp = (pred & gt).sum()
        recall = tp / gt.sum()
        total += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return total


def test_iou_invariants():
    rng = np.random.default_rng(0)
    a = rng.random((8, 8)) < 0.4
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    assert iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert np.isnan(iou(np.zeros(4, bool), np.zeros(4, bool), empty=np.nan))
    b = rng.random((8, 8)) < 0.4
    assert iou(a, b) == iou(b, a)
    with pytest.raises(ValueError):
        iou(a, a[:4])


def test_pixel_accuracy():
    a = np.array([1, 0, 1, 0], bool)
    assert pixel_accuracy(a, a) == 1.0 and pixel_accuracy(a, ~a) == 0.0


def test_average_precision_invariants():
    rng = np.random.default_rng(1)
    gt = rng.random((16, 16)) < 0.3
    assert average_precision(gt.astype(float), gt) == 1.0
    assert average_precision(gt.astype(float) * 5 + rng.random(gt.shape), gt) == 1.0
    assert average_precision(np.full(gt.shape, 0.3), gt) == pytest.approx(gt.mean())
    assert np.isnan(average_precision(np.ones(4), np.zeros(4, bool)))
    for _ in range(20):
        soft = np.round(rng.random((6, 6)), 1)  # many ties
        g = rng.random((6, 6)) < 0.4
        if g.any():
            assert average_precision(soft, g) == pytest.approx(_ap_bruteforce(soft, g))
    # worst ranking of one positive among n
    soft = np.array([4.0, 3.0, 2.0, 1.0])
    assert average_precision(soft, np.array([0, 0, 0, 1], bool)) == pytest.approx(0.25)
    # monotone transforms do not change AP
    s = rng.random((8, 8))
    assert average_precision(s, gt[:8, :8]) == pytest.approx(average_precision(np.exp(3 * s), gt[:8, :8]))


def test_pooled_vs_per_pair_differ():
    big = np.zeros((10, 10), bool); big[:5] = True  # 50 px, perfect prediction
    small_p = np.zeros((10, 10), bool); small_p[0, 0] = True
    small_g = np.zeros((10, 10), bool); small_g[9, 9] = True  # miss
    pairs = [(big, big), (small_p, small_g)]
    assert mean_iou(pairs, pooling="per_pair") == pytest.approx(0.5)
    assert mean_iou(pairs, pooling="pooled") == pytest.approx(50 / 52)
    with pytest.raises(ValueError):
        mean_iou(pairs, pooling="mean")
    with pytest.raises(ValueError):
        mean_iou([])


def test_mean_average_precision():
    gt = np.array([0, 1, 1, 0], bool)
    assert mean_average_precision([(gt * 1.0, gt), (np.ones(4), gt), (np.ones(4), np.zeros(4, bool))]) == 0.75
