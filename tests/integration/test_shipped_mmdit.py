"""The shipped MM-DiT (SD3 layout, no T5): a stock StableDiffusion3Pipeline folder."""

import json

import numpy as np
import pytest
import torch

from attnscope.pipelines import WEIGHTS

MODEL = WEIGHTS / "shapes-mmdit"
pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="this build ships no MM-DiT")


@pytest.fixture(scope="module")
def pipe():
    from attnscope.pipelines import load_pipeline

    p = load_pipeline("shapes-mmdit", device="cpu", dtype="float32", require_adapter=False)
    p.set_progress_bar_config(disable=True)
    return p


def test_stock_sd3_layout_without_t5(pipe):
    from diffusers import DiffusionPipeline, SD3Transformer2DModel, StableDiffusion3Pipeline

    assert isinstance(pipe, StableDiffusion3Pipeline) and isinstance(pipe.transformer, SD3Transformer2DModel)
    assert pipe.text_encoder_3 is None and len(pipe.transformer.transformer_blocks) >= 2
    plain = DiffusionPipeline.from_pretrained(MODEL, text_encoder_3=None, tokenizer_3=None)  # diffusers' own way
    assert isinstance(plain, StableDiffusion3Pipeline)


def test_generates_and_is_seeded(pipe):
    kwargs = dict(num_inference_steps=3, guidance_scale=4.0, output_type="np")
    first = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    again = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert first.shape == (1, 64, 64, 3) and np.array_equal(first, again)


def test_generate_traces_it(tmp_path):
    from attnscope.cli import main

    out = tmp_path / "o"
    assert main(["generate", "a red circle", "--model", str(MODEL), "--steps", "2", "--out", str(out)]) == 0
    assert (out / "overlay_circle.png").is_file() and (out / "overlay_red.png").is_file()


def test_eval_daam_generated(tmp_path):
    """`attnscope eval --model shapes-mmdit --protocol generated` scores DAAM on joint attention."""
    from attnscope.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--model", "shapes-mmdit", "--protocol", "generated", "--n", "4", "--steps", "2",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["scored_pairs"] > 0 and "daam" in json.dumps(results)


def test_eval_gate_only(tmp_path):
    from attnscope.cli import main

    out = tmp_path / "gate"
    assert main(["eval", "--model", str(MODEL), "--methods", "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    passed = [record["match"] for record in results["per_image"]]
    assert len(passed) == 2 and results["quality_gate"] == sum(passed) / 2
    assert "per_image" not in (out / "results.md").read_text()
    for record in results["per_image"]:  # an unfound object is one the caption names; a pass finds them all
        assert all(item.split()[0] in record["caption"] and item.split()[1] in record["caption"] for item in record["missing"])
        assert record["match"] == (not record["missing"]) and len(record["found"]) >= record["n_objects"] * record["match"]
    missed = results["missed_objects"]
    assert sum(sum(counts.values()) for counts in missed.values()) == sum(len(r["missing"]) for r in results["per_image"])
    for record in results["per_image"]:  # every object has a drawn size; every missed one is among them
        assert len(record["sizes"]) == record["n_objects"] and len(record["missing_sizes"]) == len(record["missing"])
    assert set(results["missed_by_size"]) <= {"small", "large"}
    assert all(0.0 <= share <= 1.0 for share in results["missed_by_size"].values())

    from attnscope.eval.compare import compare_gates, load_gate

    same = compare_gates(load_gate(out), load_gate(out))  # a gate against itself: no discordant image
    assert same.only_first == same.only_second == 0 and same.p_value == 1.0
    assert same.first_rate == same.second_rate == results["quality_gate"]
