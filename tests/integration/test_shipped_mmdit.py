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


def test_eval_scores_concept_methods_beside_daam(tmp_path):
    """ConceptAttention and its cross-attention baseline join the benchmark: traced with the batch's
    caption words (and the background) as concepts, read by word, masks at the map's mean."""
    from attnscope.cli import main

    out = tmp_path / "real"
    assert main(["eval", "--model", "shapes-mmdit", "--protocol", "real", "--n", "3", "--methods", "daam",
                 "concept_attention", "concept_cross_attention", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["table"]["all"]["rows"]
    for name in ("concept_attention", "concept_cross_attention"):
        assert rows[name]["threshold"] == "mean" and f"{name} @ best fixed τ (oracle)" not in rows
        assert 0.0 <= rows[name]["mIoU_per_pair"] <= 1.0 and 0.0 <= rows[name]["mAP"] <= 1.0
    assert rows["daam"]["threshold"] == 0.4 and "daam @ best fixed τ (oracle)" in rows


def test_concept_methods_are_read_by_word():
    from attnscope.datasets.shapes import make_scenes
    from attnscope.eval.runner import collect_pairs, trace_options
    from attnscope.realimages import trace_images

    scenes = make_scenes(0, 2, split="test")
    options = trace_options(["concept_attention"], scenes)
    words = {scenes[0].words[i] for i, kind in scenes[0].word_kinds.items() if kind != "position"}
    assert words <= set(options["concepts"]) and options["concepts"][-1] == "background"
    pipe = pytest.importorskip("attnscope").load_pipeline("shapes-mmdit", device="cpu")
    tc = trace_images(pipe, np.stack([s.image for s in scenes]), [s.caption for s in scenes], **options)
    ca, heat = tc.concept_attention(), tc.daam()
    pairs = collect_pairs({"concept_attention": ca}, scenes, [s.word_masks for s in scenes], words_from=heat)
    assert pairs and all(np.array_equal(p.soft["concept_attention"], ca.raw_map(p.word, p.image).numpy()) for p in pairs)
