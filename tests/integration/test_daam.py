"""DAAM word maps, thresholds, word lookup and save/load on a tiny SD pipeline."""

import json

import pytest
import torch

import attnscope
from attnscope.io import ResultFileError


@pytest.fixture(scope="module")
def heat(sd_pipe):
    with attnscope.trace(sd_pipe) as tc:
        sd_pipe("a cat and a caterpillar with a cat", num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), output_type="pil")
    return tc.daam(seed=0)


def test_soft_and_binary_maps(heat):
    soft = heat.word("cat")
    assert soft.dtype == torch.float32 and soft.shape == (32, 32)
    assert soft.min() == 0 and soft.max() == 1
    mask = heat.word("cat", threshold=0.4)
    assert mask.dtype == torch.bool and mask.any()
    raw = heat.token_map([w.tokens[0] for w in heat.words_by_prompt[0] if w.text == "cat"])
    assert torch.equal(mask, raw >= 0.4 * raw.max())
    assert torch.equal(heat.word("cat", threshold=0.4, threshold_mode="reference"), soft > 0.4)
    assert heat.word("cat", threshold=0.0).all()


def test_exact_word_matching(heat):
    words = heat.words_by_prompt[0]
    cats = [w for w in words if w.text == "cat"]
    assert len(cats) == 2 and all(len(w.tokens) == 1 for w in cats)
    caterpillar = next(w for w in words if w.text == "caterpillar")
    assert len(caterpillar.tokens) > 1  # the tokenizer splits it, starting with the piece "cat"
    expected = heat.token_map([cats[0].tokens[0], cats[1].tokens[0]])
    got = heat.word("cat", threshold=None)
    lo, hi = expected.min(), expected.max()
    torch.testing.assert_close(got, (expected - lo) / (hi - lo))


def test_occurrence_selection(heat):
    first, second = heat.word("cat", occurrence=0), heat.word("cat", occurrence=1)
    assert not torch.allclose(first, second)
    with pytest.raises(KeyError, match="occurs 2 time"):
        heat.word("cat", occurrence=2)


def test_unknown_word_lists_the_prompt(heat):
    with pytest.raises(KeyError, match="its words are: a cat and a caterpillar with a cat"):
        heat.word("giraffe")
    with pytest.raises(KeyError):
        heat.word("ca")  # a piece of a word is not a word


def test_multi_token_word_is_mean_of_its_tokens(heat):
    caterpillar = next(w for w in heat.words_by_prompt[0] if w.text == "caterpillar")
    per_token = torch.stack([heat.token_map([t]) for t in caterpillar.tokens]).mean(0)
    torch.testing.assert_close(heat.token_map(list(caterpillar.tokens)), per_token, atol=1e-6, rtol=1e-5)


def test_per_head_maps_average_to_the_whole(heat):
    positions = [2]
    heads = [l.head_offset + h for l in heat.layers for h in range(l.heads)]
    whole = heat.token_map(positions)
    per_head = torch.stack([heat.token_map(positions, heads=[g]) for g in heads]).mean(0)
    torch.testing.assert_close(whole, per_head, atol=1e-6, rtol=1e-5)


def test_save_load_round_trip(heat, tmp_path):
    path = heat.save(tmp_path / "run")
    again = attnscope.load(path)
    assert again.meta == heat.meta and again.words(0) == heat.words(0)
    assert again.layers == heat.layers and again.head_index == heat.head_index
    for name in heat.maps:
        assert torch.equal(again.maps[name], heat.maps[name])
    assert torch.equal(again.images, heat.images)
    assert torch.equal(again.word("caterpillar"), heat.word("caterpillar"))
    assert not list(tmp_path.glob(".run*"))  # no staging folder left behind
    heat.save(path)  # overwriting a result is allowed
    assert torch.equal(attnscope.load(path).maps[heat.layers[0].name], heat.maps[heat.layers[0].name])


def test_corrupt_or_foreign_files_give_clear_errors(heat, tmp_path):
    path = heat.save(tmp_path / "run")
    (path / "tensors.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ResultFileError, match="corrupt"):
        attnscope.load(path)
    with pytest.raises(ResultFileError, match="is not an attnscope result"):
        attnscope.load(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(FileExistsError):
        heat.save(other)
    heat.save(tmp_path / "bad")
    record = json.loads((tmp_path / "bad" / "attnscope.json").read_text())
    record["kind"] = "mystery"
    (tmp_path / "bad" / "attnscope.json").write_text(json.dumps(record))
    with pytest.raises(ResultFileError, match="mystery"):
        attnscope.load(tmp_path / "bad")


def test_overlay(heat):
    img = heat.overlay("cat")
    assert img.size == (32, 32)


def test_bad_arguments(heat):
    with pytest.raises(IndexError, match="1 image"):
        heat.word("cat", image=3)
    with pytest.raises(ValueError, match="threshold"):
        heat.word("cat", threshold=1.5)
    with pytest.raises(ValueError, match="threshold_mode"):
        heat.word("cat", threshold=0.4, threshold_mode="other")
