"""Scoring invariants of the benchmark runner on synthetic maps."""

import numpy as np
import pytest

from attnscope.eval.methods import MapMethod, get_method, register_method
from attnscope.eval.report import markdown_table
from attnscope.eval.runner import Pair, summarize

register_method(MapMethod("oracle-test", lambda r, i, p: None, threshold=0.4, threshold_rule="relative_max"))


def _pairs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        gt = np.zeros((16, 16), bool)
        y, x = rng.integers(0, 8, 2)
        gt[y : y + 6, x : x + 6] = True
        pairs.append(Pair(i, "circle", "shape" if i % 2 else "color", gt, {"oracle-test": gt.astype(float)}))
    return pairs


def test_perfect_maps_score_one_and_baselines_do_not():
    table = summarize(_pairs(), ["oracle-test"])
    rows = table["all"]["rows"]
    assert rows["oracle-test"]["mIoU_per_pair"] == 1.0 and rows["oracle-test"]["mAP"] == 1.0
    assert rows["oracle-test"]["pixel_acc"] == 1.0
    assert rows["baseline: whole image"]["mIoU_per_pair"] == pytest.approx(36 / 256)
    assert rows["baseline: random map"]["mIoU_per_pair"] < 0.5
    assert set(table) == {"all", "color", "shape"} and table["shape"]["pairs"] == 3
    assert "oracle-test" in markdown_table(table)


def test_binarisation_rules():
    soft = np.array([[0.0, 0.5], [1.0, 2.0]])
    daam = get_method("daam")
    assert daam.binarize(soft).tolist() == [[False, False], [True, True]]
    mean_rule = MapMethod("m", lambda *a: None, 0.0, "mean")
    assert mean_rule.binarize(soft).tolist() == [[False, False], [True, True]]


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="nothing to score"):
        summarize([], ["daam"])
