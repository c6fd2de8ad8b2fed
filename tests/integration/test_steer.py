"""Steering heads during generation: exact no-ops, the rescaling rule, composition with tracing, clean-up."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnscope
from attnscope.control import scale, steer, weaken
from attnscope.control.hooks import SDPACall, model_layers
from attnscope.control.steer import _rescaled

PROMPTS = ["a red cat", "a blue dog"]


def run(pipe, *edits, prompt=PROMPTS, **kwargs):
    options = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    options.update(kwargs)
    with steer(pipe, *edits):
        return pipe(prompt, **options).images


def n_heads(pipe) -> int:
    return sum(l.heads for l, _ in model_layers(pipe)[1])


def no_hooks(pipe) -> bool:
    modules = [m for _, m in model_layers(pipe)[1]] + [pipe.unet, pipe.text_encoder]
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)


def test_an_edit_on_no_heads_and_an_all_ones_edit_change_nothing(sd_pipe):
    plain = sd_pipe(PROMPTS, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(run(sd_pipe, weaken(heads=[])), plain)
    assert np.array_equal(run(sd_pipe, scale(torch.ones(n_heads(sd_pipe)), word="cat")), plain)
    assert np.array_equal(run(sd_pipe, weaken(heads=range(n_heads(sd_pipe)), steps=(5, 9))), plain)  # outside the run
    assert not np.allclose(run(sd_pipe, weaken(heads=range(n_heads(sd_pipe)))), plain, atol=1e-3)


def test_the_correction_is_the_rescaled_attention_without_renormalisation():
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 3, 5, 8), torch.randn(4, 3, 7, 8), torch.randn(4, 3, 7, 8)
    grid = torch.ones(2, 2, 7)
    grid[0, :, [1, 2]] = torch.tensor([[-2.0], [3.0]])
    grid[1, 1, 4] = 0.5
    out = _rescaled(SDPACall(F.scaled_dot_product_attention, (q, k, v), {}), slice(2, 4), [0, 2], grid)
    plain = F.scaled_dot_product_attention(q, k, v)
    probs = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    expected = plain.clone()
    expected[2:, [0, 2]] = (probs[2:, [0, 2]] * grid[:, :, None, :]) @ v[2:, [0, 2]]
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(out[:2], plain[:2]) and torch.equal(out[2:, 1], plain[2:, 1])  # untouched rows and heads


def test_edits_compose_by_multiplying(sd_pipe):
    twice = run(sd_pipe, weaken(heads=[0, 3]) + weaken(heads=[3]))
    assert np.array_equal(twice, run(sd_pipe, scale({0: -2.0, 3: 4.0})))


@pytest.mark.parametrize("steer_inside", [True, False])
def test_tracing_and_steering_compose_in_either_order(sd_pipe, steer_inside):
    edit = weaken(heads=range(n_heads(sd_pipe)), word="cat")
    options = dict(num_inference_steps=2, output_type="np")
    with attnscope.trace(sd_pipe, keep_steps=True) as plain_trace:
        sd_pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), **options)
    tc = attnscope.trace(sd_pipe, keep_steps=True)
    outer, inner = (tc, steer(sd_pipe, edit)) if steer_inside else (steer(sd_pipe, edit), tc)
    with outer, inner:
        images = sd_pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), **options).images
    assert np.array_equal(images, run(sd_pipe, edit, prompt=PROMPTS[0]))  # the steered run
    steered, plain = tc.daam(), plain_trace.daam()
    first = steered.layers[0].name
    # the first layer's first call sees the same q and k: the maps hold the probabilities before the edit
    assert torch.allclose(steered.per_step[first][0], plain.per_step[first][0], atol=1e-6)
    assert not torch.allclose(steered.word("cat"), plain.word("cat"), atol=1e-3)  # later calls: the steered run
    assert no_hooks(sd_pipe)


def test_hooks_are_removed_after_an_exception(sd_pipe):
    def explode(pipe, i, t, kw):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attnscope.trace(sd_pipe), steer(sd_pipe, weaken(heads=[0])):
            sd_pipe("a red cat", num_inference_steps=2, callback_on_step_end=explode)
    assert no_hooks(sd_pipe)
    with pytest.raises(KeyError, match="its words are: a blue dog"):
        run(sd_pipe, weaken(heads=[0], word="cat"), prompt="a blue dog")
    assert no_hooks(sd_pipe)


def test_bad_edits_say_what_exists(sd_pipe, sdxl_pipe):
    with pytest.raises(ValueError, match=f"has {n_heads(sd_pipe)} heads"):
        steer(sd_pipe, weaken(heads=[999]))
    hrv = attnscope.hrv.build(sdxl_pipe, {"a": ["red"], "b": ["cat"]}, ["a red cat"], num_inference_steps=1)
    with pytest.raises(ValueError, match="use head relevance built for this model"):
        steer(sd_pipe, attnscope.hrv.strengthen(hrv, word="cat", concept="b"))
    with pytest.raises(KeyError, match="this HRV has: a, b"):
        attnscope.hrv.strengthen(hrv, word="cat", concept="animal")
    with pytest.raises(ValueError, match="not understood"):
        weaken(heads=[0], steps="early")


def test_sdxl_and_unguided_pipelines_steer(sdxl_pipe, sd_pipe):
    hrv = attnscope.hrv.build(sdxl_pipe, {"a": ["red", "blue"], "b": ["cat", "dog"]}, PROMPTS, num_inference_steps=1)
    prompt = ["a red cat", "a cat in red"]  # every prompt of the batch holds the steered words
    plain = run(sdxl_pipe, weaken(heads=[]), prompt=prompt)
    strengthened = run(sdxl_pipe, attnscope.hrv.strengthen(hrv, word="cat", concept="b"), prompt=prompt)
    adjusted = run(sdxl_pipe, attnscope.hrv.adjust(hrv, word="red", plus="a", minus="b", steps=(0.0, 0.5)),
                   prompt=prompt)
    assert not np.allclose(plain, strengthened, atol=1e-4) and not np.allclose(plain, adjusted, atol=1e-4)
    unguided = run(sd_pipe, weaken(heads=[]), guidance_scale=1.0)
    assert not np.allclose(unguided, run(sd_pipe, weaken(heads=range(6)), guidance_scale=1.0), atol=1e-4)
    assert no_hooks(sdxl_pipe)


def test_joint_attention_pipelines_are_refused_with_what_is_supported():
    from attnscope.adapters import UnsupportedPipelineError
    from attnscope.testing import tiny_sd3_pipeline

    with pytest.raises(UnsupportedPipelineError, match="UNet pipelines"):
        steer(tiny_sd3_pipeline(num_layers=1), weaken(heads=[0]))
