"""Selective head aggregation: the registered methods, their relation to DAAM, files, sweep and figure."""

import pytest
import torch

import attnscope
from attnscope.hrv.vectors import HeadRelevance
from attnscope.methods import get_method
from attnscope.methods.selective import SelectiveResult, diagnose, k_sweep

CONCEPTS = {"colour": ["red", "blue"], "animal": ["cat", "dog"]}


@pytest.fixture(scope="module")
def traced(sd_pipe):
    hrv = attnscope.hrv.build(sd_pipe, CONCEPTS, ["a red cat", "a blue dog"], num_inference_steps=2)
    attnscope.hrv.attach(sd_pipe, hrv)
    with attnscope.trace(sd_pipe) as tc:
        sd_pipe(["a red cat", "a blue dog"], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    return tc, hrv


def test_the_three_registered_modes_read_the_attached_hrv(traced):
    tc, hrv = traced
    top, bottom, weighted = tc.selective(), tc.run("selective-bottom"), tc.run("hrv-weighted")
    assert all(isinstance(r, SelectiveResult) for r in (top, bottom, weighted))
    assert (top.mode, bottom.mode, weighted.mode) == ("top", "bottom", "weighted")
    assert top.n_selected() == round(0.25 * hrv.n_heads)
    assert not torch.allclose(top.raw_map("cat"), bottom.raw_map("cat"))
    positions = list(next(w for w in top.word_tokens(0) if w.text == "cat").tokens)
    assert torch.equal(top.raw_map(positions, 0), top.raw_map("cat", 0))  # how the benchmark asks


def test_every_head_at_weight_one_is_daam(traced):
    tc, hrv = traced
    daam, top = tc.daam(), tc.selective()
    assert torch.allclose(top.raw_map("dog", 1, k=hrv.n_heads), daam.raw_map("dog", 1), atol=1e-6)
    flat = HeadRelevance(torch.ones_like(hrv.matrix), hrv.concepts, hrv.heads, words=hrv.words)
    weighted = get_method("hrv-weighted", hrv=flat)(tc)
    assert torch.allclose(weighted.raw_map("red"), daam.raw_map("red"), atol=1e-6)
    assert torch.equal(top.raw_map("red", heads=[0, 1]), daam.raw_map("red", heads=[0, 1]))


def test_words_outside_the_concepts_and_missing_hrvs_say_what_to_do(traced, sdxl_pipe):
    tc, _ = traced
    with pytest.raises(KeyError, match="one of: colour, animal"):
        tc.selective().raw_map("a")
    assert get_method("selective", concepts={"a": "animal"})(tc).raw_map("a").shape == (32, 32)
    with pytest.raises(LookupError, match="attnscope.hrv.attach"):
        with attnscope.trace(sdxl_pipe) as other:
            sdxl_pipe("a cat", num_inference_steps=1)
        other.selective()


def test_saves_sweeps_and_draws(traced, tmp_path):
    tc, hrv = traced
    result = tc.selective(seed=0)
    again = attnscope.load(result.save(tmp_path / "sel"))
    assert isinstance(again, SelectiveResult) and torch.equal(again.raw_map("cat"), result.raw_map("cat"))
    assert torch.equal(again.relevance.matrix, hrv.matrix) and again.meta["seed"] == 0
    gt = result.raw_map("cat") > result.raw_map("cat").mean()
    rows = k_sweep(result, [(0, "cat", gt.numpy())], ks=[2, hrv.n_heads])
    assert [r["k"] for r in rows] == [2, hrv.n_heads] and all(0 <= r["top"] <= 1 and 0 <= r["bottom"] <= 1 for r in rows)
    assert rows[-1]["top"] == rows[-1]["bottom"]  # all heads either way
    figure = diagnose(result, "cat", k=3)
    assert figure.size[0] == 3 * figure.size[1] - 3 * 16  # image, most, least; labels underneath
