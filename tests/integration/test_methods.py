"""The method interface: methods read a trace into typed results with shared behaviour."""

import pytest
import torch

import attnscope
from attnscope.methods import DAAM, DAAMResult, available_methods, get_method
from attnscope.methods.base import DEFAULT_THRESHOLD, MapResult, threshold_map


@pytest.fixture(scope="module")
def traced(sd_pipe):
    with attnscope.trace(sd_pipe) as tc:
        sd_pipe(["a red cat", "a blue dog"], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    return tc


def test_every_spelling_of_daam_gives_the_same_result(traced):
    by_name, by_object, by_attribute = traced.run("daam"), DAAM()(traced), traced.daam()
    assert isinstance(by_name, DAAMResult) and isinstance(by_name, MapResult)
    for other in (by_object, by_attribute):
        assert torch.equal(by_name.word("cat", image=0), other.word("cat", image=0))
    assert "daam" in available_methods() and isinstance(get_method("daam"), DAAM)


def test_shared_behaviour_soft_mask_and_keys(traced):
    heat = traced.daam()
    assert heat.keys(1) == ["a", "blue", "dog"]
    soft = heat.soft("dog", image=1)
    assert soft.min() == 0 and soft.max() == 1 and torch.equal(soft, heat.word("dog", image=1))
    raw = heat.raw_map("dog", image=1)
    assert torch.equal(heat.mask("dog", image=1), raw >= DEFAULT_THRESHOLD * raw.max())
    assert torch.equal(heat.mask("dog", image=1), heat.word("dog", image=1, threshold=DEFAULT_THRESHOLD))
    assert torch.equal(heat.mask("dog", image=1, rule="mean"), threshold_map(raw, "mean"))
    positions = list(next(w for w in heat.word_tokens(1) if w.text == "dog").tokens)
    assert torch.equal(heat.raw_map(positions, image=1), raw)
    assert heat.overlay("dog", image=1).size == (raw.shape[1], raw.shape[0])


def test_unknown_method_and_image_errors_name_the_valid_choices(traced):
    with pytest.raises(KeyError, match="available: .*daam"):
        traced.run("no-such-method")
    with pytest.raises(AttributeError):
        traced.no_such_method()
    with pytest.raises(IndexError, match=r"has 2 image\(s\) \(valid: 0..1\)"):
        traced.daam().overlay("cat", image=3)
    with pytest.raises(IndexError, match=r"holds 1 pipeline call\(s\)"):
        traced.daam(5)


def test_results_load_back_by_their_kind(traced, tmp_path):
    heat = traced.daam(seed=0)
    again = attnscope.load(heat.save(tmp_path / "r"))
    assert type(again) is DAAMResult and torch.equal(again.word("red", image=0), heat.word("red", image=0))
    assert again.meta["seed"] == 0
