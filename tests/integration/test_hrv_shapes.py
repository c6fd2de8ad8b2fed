"""The HRV applications on the shipped ShapesWorld UNet, a few steps each: they run end to end and keep
their invariants (the source of a word swap is untouched; Attend-and-Excite without updates is plain
generation). The measurements themselves are benchmarks/hrv_shapes.py."""

import numpy as np
import pytest
import torch

import attnscope
from attnscope.datasets.shapes import make_scenes

STEPS = 2


@pytest.fixture(scope="module")
def shapes():
    pipe = attnscope.load_pipeline("shapes-unet", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    scenes = make_scenes(0, 2, split="test")
    hrv = attnscope.hrv.build(pipe, attnscope.hrv.shapes_concepts(), [s.caption for s in scenes],
                              num_inference_steps=STEPS)
    return pipe, scenes, hrv


def plain(pipe, prompt, seed=0, **kwargs):
    return pipe(prompt, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(seed),
                **kwargs).images


def test_the_shapes_concepts_cover_the_caption_vocabulary(shapes):
    _, scenes, hrv = shapes
    assert hrv.concepts == ["colour", "shape", "size", "relation"]
    kinds = {"color": "colour", "shape": "shape", "size": "size", "position": "relation"}
    for scene in scenes:
        for i, kind in scene.word_kinds.items():
            assert hrv.concept_of(scene.words[i]) == kinds[kind]


def test_ordered_weakening_scores_with_the_detector(shapes):
    pipe, scenes, hrv = shapes
    result = attnscope.hrv.ordered_weakening(pipe, hrv, "colour", [(s.caption, s) for s in scenes[:1]],
                                             attnscope.hrv.ShapesScorer("colour"), ks=[0, 3, hrv.n_heads],
                                             num_inference_steps=STEPS)
    assert result.ks == [0, 3, hrv.n_heads] and len(result.mean("MoRHF")) == 3
    assert result.scores["MoRHF"][0] == result.scores["LeRHF"][0]  # k = 0: nothing weakened either way
    assert result.table().count("\n") == 4 and result.plot().size == (480, 320)


def test_polysemy_correction_and_word_swap(shapes):
    pipe, _, hrv = shapes
    adjusted = attnscope.hrv.correct_polysemy(pipe, "a red circle", "red", hrv, wanted="colour", unwanted="shape",
                                              num_inference_steps=STEPS, output_type="np",
                                              generator=torch.Generator().manual_seed(0)).images
    assert adjusted.shape == (1, 64, 64, 3) and not np.array_equal(adjusted, plain(pipe, "a red circle"))
    both = attnscope.hrv.word_swap(pipe, "a red circle", "a blue circle", hrv, num_inference_steps=STEPS,
                                   output_type="np").images
    generators = [torch.Generator().manual_seed(0) for _ in range(2)]
    reference = pipe(["a red circle", "a blue circle"], num_inference_steps=STEPS, output_type="np",
                     generator=generators).images
    assert np.array_equal(both[0], reference[0]) and not np.array_equal(both[1], reference[1])
    with pytest.raises(ValueError, match="same number of words"):
        attnscope.hrv.word_swap(pipe, "a red circle", "a big blue circle", hrv)


def test_attend_and_excite_moves_the_latents_only_when_asked(shapes):
    pipe, _, hrv = shapes
    prompt = "a red circle and a blue square"
    still = attnscope.hrv.attend_and_excite(pipe, prompt, ["circle", "square"], hrv, until=0.0,
                                            num_inference_steps=STEPS, output_type="np").images
    assert np.array_equal(still, plain(pipe, prompt))
    excited = attnscope.hrv.attend_and_excite(pipe, prompt, ["circle", "square"], hrv,
                                              num_inference_steps=STEPS, output_type="np").images
    assert not np.array_equal(excited, still)


def test_the_benchmark_runs_selective_heads_by_name(shapes):
    from attnscope.eval.runner import run_generated

    pipe, scenes, hrv = shapes
    attnscope.hrv.attach(pipe, hrv)
    pairs, records, _ = run_generated(pipe, scenes, ["daam", "selective"], steps=STEPS, batch=2)
    assert len(records) == 2 and all(set(p.soft) == {"daam", "selective"} for p in pairs)
