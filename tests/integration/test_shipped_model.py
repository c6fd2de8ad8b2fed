"""The shipped ShapesWorld model: loads like any diffusers folder, and the default CLI / eval paths run on it."""

import json

import numpy as np
import pytest
import torch

import attnscope
from attnscope.pipelines import shipped_model_dir

MODEL = shipped_model_dir()


@pytest.fixture(scope="module")
def pipe():
    from diffusers import DiffusionPipeline

    p = DiffusionPipeline.from_pretrained(MODEL)  # no dtype: the plain call must give a runnable pipeline
    p.set_progress_bar_config(disable=True)
    return p


def test_loads_as_stable_diffusion_layout(pipe):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.unet, UNet2DConditionModel)
    shipped = sum(f.stat().st_size for f in MODEL.parent.rglob("*.safetensors"))  # every shipped model together
    assert shipped <= 40 * 2**20


def test_every_vocabulary_word_is_one_token_and_captions_fit(pipe):
    """The shipped tokenizer keeps each ShapesWorld word whole, so no caption overflows the context."""
    from attnscope.core.tokens import words_from_tokens
    from attnscope.datasets.shapes import make_scenes, vocabulary

    assert all(len(pipe.tokenizer.tokenize(word)) == 1 for word in vocabulary())
    for scene in make_scenes(0, 50, split="test"):
        tokens = pipe.tokenizer.tokenize(scene.caption)
        assert len(tokens) + 2 <= pipe.tokenizer.model_max_length
        assert [w.text for w in words_from_tokens(tokens, set())] == scene.words


def test_traced_equals_untraced_and_maps(pipe):
    prompt = "a red circle to the left of a blue square"
    kwargs = dict(num_inference_steps=4, guidance_scale=4.0, output_type="np")
    plain = pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    with attnscope.trace(pipe) as tc:
        traced = pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.array_equal(plain, traced)
    heat = tc.daam()
    assert heat.words() == prompt.split()
    assert heat.word("circle").shape == (64, 64)
    assert len({layer.factor for layer in heat.layers}) >= 2  # cross-attention at two or more resolutions


def test_cli_default_model(tmp_path):
    from attnscope.cli import main

    assert main(["generate", "a yellow star", "--out", str(tmp_path / "o"), "--steps", "4"]) == 0
    record = json.loads((tmp_path / "o" / "record.json").read_text())
    assert record["model"].endswith("shapes-unet") and record["words"] == ["yellow", "star"]


@pytest.mark.parametrize("protocol", ["generated", "real"])
def test_eval_runs_and_reports_baselines(tmp_path, protocol):
    from attnscope.cli import main

    out = tmp_path / protocol
    assert main(["eval", "--protocol", protocol, "--n", "4", "--steps", "4", "--batch", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["table"]["all"]["rows"]
    assert {"baseline: whole image", "baseline: random map", "daam", "daam @ best fixed τ (oracle)"} <= set(rows)
    whole = rows["baseline: whole image"]
    assert 0 < whole["mIoU_per_pair"] < 1 and whole["pixel_acc"] == pytest.approx(whole["mIoU_per_pair"], abs=1e-9)
    assert rows["daam @ best fixed τ (oracle)"]["mIoU_per_pair"] >= rows["daam"]["mIoU_per_pair"] - 1e-9
    assert (out / "results.md").is_file() and (out / "examples_daam.png").is_file()


def test_per_head_scores_every_head_and_one_head_is_the_whole_map(tmp_path):
    from attnscope.cli import main
    from attnscope.eval.heads import summarize_heads
    from attnscope.eval.runner import run_real
    from attnscope.datasets.shapes import make_scenes

    out = tmp_path / "heads"
    assert main(["eval", "--protocol", "real", "--n", "3", "--batch", "3", "--per-head", "--out", str(out)]) == 0
    per_head = json.loads((out / "results.json").read_text())["per_head"]
    assert set(per_head) <= {"color", "shape", "size"} and "Per-head mIoU (28 heads" in (out / "results.md").read_text()
    for row in per_head.values():
        values = list(row["per head"].values())
        assert len(values) == 28 and row["best"] == max(values) and row["worst"] == min(values)
        assert row["heads above all-head map"] == sum(v > row["all heads"] for v in values)
    # a trace that stores one head: that head's own score is the all-head (DAAM) score, pair by pair
    pipe = attnscope.load_pipeline("shapes-unet", device="cpu")
    scenes = make_scenes(0, 2, split="test")
    from attnscope.realimages import trace_images
    from attnscope.eval.runner import collect_pairs, binarize
    from attnscope.eval.metrics import iou

    tc = trace_images(pipe, np.stack([s.image for s in scenes]), [s.caption for s in scenes],
                      layers=["down_blocks.0.attentions.0.transformer_blocks.0.attn2"], heads=[1])
    pairs = collect_pairs({"daam": tc.daam()}, scenes, [s.word_masks for s in scenes], per_head="daam")
    assert pairs and all(p.head_names == (p.head_names[0],) for p in pairs)
    for p in pairs:
        assert p.heads.tolist() == [iou(binarize("daam", p.soft["daam"]), p.gt)]
    assert summarize_heads(pairs)[pairs[0].kind]["pairs"] == sum(q.kind == pairs[0].kind for q in pairs)


def test_per_head_needs_daam(tmp_path, capsys):
    from attnscope.cli import main

    assert main(["eval", "--protocol", "real", "--n", "2", "--methods", "concept_attention", "--per-head",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--per-head scores DAAM's heads one by one; add daam to --methods." in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_gate_only_traces_nothing(tmp_path):
    from attnscope.cli import main

    out = tmp_path / "gate"
    assert main(["eval", "--methods", "--n", "3", "--steps", "2", "--batch", "3", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["quality_gate"] <= 1.0 and results["table"] == {} and results["scored_pairs"] == 0
    assert (out / "samples.png").is_file() and len((out / "samples.txt").read_text().splitlines()) == 3
    from attnscope.datasets.shapes import make_scenes

    scenes = make_scenes(0, 3, split="test", size=64)
    named = {o.shape for scene in scenes for o in scene.objects}
    assert set(results["quality_by_shape"]) == named  # one rate per shape the captions name, each a share of them
    for shape, rate in results["quality_by_shape"].items():
        n = sum(any(o.shape == shape for o in scene.objects) for scene in scenes)
        assert n > 0 and any(abs(rate - k / n) < 1e-4 for k in range(n + 1))


def test_real_protocol_needs_a_method(tmp_path, capsys):
    from attnscope.cli import main

    assert main(["eval", "--protocol", "real", "--methods", "--out", str(tmp_path / "r")]) == 2
    assert "name at least one method" in capsys.readouterr().err


DEMO = "a red circle to the left of a blue square"


@pytest.mark.parametrize("model", ["shapes-unet", "shapes-mmdit"])
def test_demo_prompt_object_words_localise(model):
    """The Quick start's demo: each object word's map is hotter on its own object than on the rest of
    the image and on the other object, and its mask covers under half of the image."""
    from attnscope.datasets.detect import detect
    from attnscope.pipelines import model_defaults

    pipe = attnscope.load_pipeline(model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    with attnscope.trace(pipe) as tc:
        out = pipe(DEMO, num_inference_steps=20, guidance_scale=model_defaults(model)["guidance_scale"],
                   generator=torch.Generator().manual_seed(0), output_type="np")
    image = (out.images[0] * 255).round().astype(np.uint8)
    found = {(d.color, d.shape): d.mask for d in detect(image)}
    objects = {"red": ("red", "circle"), "circle": ("red", "circle"), "blue": ("blue", "square"), "square": ("blue", "square")}
    assert set(objects.values()) <= set(found), f"the demo image should show both objects; found {sorted(found)}"
    heat = tc.daam()
    for word, obj in objects.items():
        soft, mask = heat.word(word).numpy(), heat.word(word, threshold=0.4).numpy()
        own, other = found[obj], found[next(o for o in set(objects.values()) if o != obj)]
        assert mask.mean() < 0.5, (word, mask.mean())
        assert soft[own].mean() > soft[~own].mean() and soft[own].mean() > soft[other].mean(), word
        assert (mask & own).sum() > 0.5 * own.sum(), (word, "mask covers under half of its object")
