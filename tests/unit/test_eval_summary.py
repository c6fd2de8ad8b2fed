"""Scoring invariants of the benchmark runner on synthetic maps."""

import numpy as np
import pytest
import torch

from attnscope.eval.report import markdown_table
from attnscope.eval.runner import Pair, binarize, summarize
from attnscope.methods import DAAMResult, Method, register_method
from attnscope.methods.base import threshold_map


@register_method
class OracleTest(Method):
    """A method whose maps the test sets directly (scored with DAAM's threshold rule)."""

    name = "oracle-test"
    result_type = DAAMResult


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
    assert {"all", "color", "shape"} <= set(table) and table["shape"]["pairs"] == 3
    assert "oracle-test" in markdown_table(table)


def test_binarisation_rules():
    soft = np.array([[0.0, 0.5], [1.0, 2.0]])
    assert binarize("daam", soft).tolist() == [[False, False], [True, True]]  # D >= 0.4 max D
    assert binarize("daam", soft, 0.2).tolist() == [[False, True], [True, True]]
    assert threshold_map(torch.tensor(soft), "mean").tolist() == [[False, False], [True, True]]
    shifted = torch.tensor(soft) + 10  # eq. 7 is on the raw map: min-max scaling would change it
    assert threshold_map(shifted, "relative_max", 0.99).sum() == 1
    assert threshold_map(shifted, "reference", 0.99).sum() == 1 and threshold_map(shifted, "reference", 0.7).sum() == 1


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="nothing to score"):
        summarize([], ["daam"])


def test_groups_by_the_named_objects_position():
    pairs = _pairs(6)
    for i, pair in enumerate(pairs):
        pair.object_index, pair.n_objects = i % 3, 3
    table = summarize(pairs, ["oracle-test"])
    first = table["color, first-named object"]
    assert first["pairs"] == sum(1 for p in pairs if p.kind == "color" and p.object_index == 0)
    assert "shape, last-named object" in table and all(p.caption_position is None for p in pairs if p.object_index == 1)
