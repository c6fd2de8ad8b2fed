"""Invariants of the tracing core on tiny SD and SDXL pipelines."""

import numpy as np
import pytest
import torch

import attnscope
from attnscope.adapters import UnsupportedPipelineError, adapter_for

STEPS = 3


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def run(pipe, prompt="a cat and a giraffe", steps=STEPS, **kw):
    return pipe(prompt, num_inference_steps=steps, generator=kw.pop("generator", gen()), output_type="np", **kw)


def hooks_left(pipe):
    modules = [pipe.unet, pipe.vae.decoder, pipe.text_encoder] + [m for m in pipe.unet.modules()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


@pytest.mark.parametrize("name", ["sd_pipe", "sdxl_pipe"])
def test_traced_output_equals_untraced(name, request):
    pipe = request.getfixturevalue(name)
    plain = run(pipe).images
    with attnscope.trace(pipe) as tc:
        traced = run(pipe).images
    assert np.array_equal(plain, traced)
    assert tc.daam().n_images == 1


def test_attention_rows_sum_to_one(sd_pipe):
    with attnscope.trace(sd_pipe, keep_padding=True) as tc:
        run(sd_pipe)
    heat = tc.daam()
    assert heat.meta["steps_read"] == list(range(STEPS))
    for name, maps in heat.maps.items():
        assert maps.shape[2] == 77  # every token kept
        total = maps.sum(dim=2)  # (images, heads, h, w): sum over tokens of summed probabilities
        torch.testing.assert_close(total, torch.full_like(total, STEPS), rtol=0, atol=1e-4)


def test_captured_image_is_the_pipeline_image(sd_pipe):
    with attnscope.trace(sd_pipe) as tc:
        out = sd_pipe("a red dog", num_inference_steps=2, generator=gen())
    assert np.array_equal(tc.daam().images[0].numpy(), np.array(out.images[0]))


def test_batch_maps_equal_single_runs(sd_pipe):
    prompts = ["a cat and a giraffe", "a red dog with a hat"]
    with attnscope.trace(sd_pipe) as tc:
        run(sd_pipe, prompts, generator=[gen(0), gen(1)])
    batch = tc.daam()
    for i, prompt in enumerate(prompts):
        with attnscope.trace(sd_pipe) as tc1:
            run(sd_pipe, prompt, generator=gen(i))
        single = tc1.daam()
        assert batch.words(i) == single.words(0)
        for word in single.words(0):
            torch.testing.assert_close(batch.word(word, image=i), single.word(word), atol=2e-4, rtol=1e-3)


def test_images_per_prompt_kept_apart(sd_pipe):
    with attnscope.trace(sd_pipe) as tc:
        run(sd_pipe, ["a cat", "a red dog"], num_images_per_prompt=2)
    heat = tc.daam()
    assert heat.n_images == 4 and heat.prompt_of_image == [0, 0, 1, 1]
    assert heat.words(1) == ["a", "cat"] and heat.words(3) == ["a", "red", "dog"]
    # different starting noise -> different maps for the two images of one prompt
    assert not torch.allclose(heat.word("cat", image=0), heat.word("cat", image=1))


def test_without_cfg_all_heads_and_one_half(sd_pipe):
    with attnscope.trace(sd_pipe) as tc:
        run(sd_pipe, guidance_scale=1.0)
    heat = tc.daam()
    assert heat.meta["cfg"] is False and heat.n_images == 1
    for layer in heat.layers:
        assert heat.maps[layer.name].shape[1] == layer.heads


@pytest.mark.parametrize("height,width", [(32, 48), (40, 24)])
def test_non_square_images(sd_pipe, height, width):
    with attnscope.trace(sd_pipe) as tc:
        run(sd_pipe, height=height, width=width)
    heat = tc.daam()
    assert heat.latent_hw == (height // 2, width // 2)
    for layer in heat.layers:
        assert heat.maps[layer.name].shape[-2:] == (layer.height, layer.width)
        assert layer.height * layer.factor >= height // 2 and layer.width * layer.factor >= width // 2
    assert heat.word("giraffe").shape == (height, width)


def test_layout_orientation_follows_latent(sd_pipe):
    """A map stored as (h, w) must match the layer's own (P -> h, w) raster order."""
    seen = {}

    def grab(module, args, kwargs, output):
        seen["shape"] = args[0].shape  # (B, h*w, C) hidden states

    layer = adapter_for(sd_pipe).attention_layers()[0][1]
    handle = layer.register_forward_hook(grab, with_kwargs=True)
    try:
        with attnscope.trace(sd_pipe) as tc:
            run(sd_pipe, height=32, width=48, steps=1)
    finally:
        handle.remove()
    first = tc.daam().layers[0]
    assert seen["shape"][1] == first.height * first.width == 16 * 24


def test_memory_does_not_grow_with_steps(sd_pipe):
    sizes = []
    for steps in (2, 6):
        with attnscope.trace(sd_pipe) as tc:
            run(sd_pipe, steps=steps)
        sizes.append(sum(t.numel() * t.element_size() for t in tc.generation().sums.values()))
    assert sizes[0] == sizes[1]


def test_step_range_and_kept_steps(sd_pipe):
    with attnscope.trace(sd_pipe, keep_steps=True) as tc:
        run(sd_pipe, steps=4)
    heat = tc.daam()
    for name, maps in heat.maps.items():
        torch.testing.assert_close(heat.per_step[name].sum(0), maps, atol=1e-5, rtol=1e-5)
    with attnscope.trace(sd_pipe, steps=range(1, 3)) as tc2:
        run(sd_pipe, steps=4)
    part = tc2.daam()
    assert part.meta["steps_read"] == [1, 2]
    for name, maps in part.maps.items():
        torch.testing.assert_close(heat.per_step[name][1:3].sum(0), maps, atol=1e-5, rtol=1e-5)
    with attnscope.trace(sd_pipe, steps=(1, 2)) as tc3:
        run(sd_pipe, steps=4)
    torch.testing.assert_close(tc3.daam().word("cat"), heat.word("cat", step=1), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="not read"):
        heat.word("cat", step=9)


def test_head_and_layer_selection(sd_pipe):
    with attnscope.trace(sd_pipe) as full:
        run(sd_pipe)
    with attnscope.trace(sd_pipe, heads=[0], layers="down_blocks.*") as some:
        run(sd_pipe)
    a, b = full.daam(), some.daam()
    assert [l.name for l in b.layers] == [l.name for l in a.layers if l.name.startswith("down_blocks")]
    for name, maps in b.maps.items():
        assert maps.shape[1] == 1
        torch.testing.assert_close(maps[:, 0], a.maps[name][:, 0])
    with attnscope.trace(sd_pipe, factors=[2]) as coarse:
        run(sd_pipe)
    assert {l.factor for l in coarse.daam().layers} == {2}
    with pytest.raises(ValueError, match="No attention layer matches"):
        attnscope.trace(sd_pipe, layers="nope.*")
    with pytest.raises(ValueError, match="head indices"):
        attnscope.trace(sd_pipe, heads=[7])


def test_global_head_index_orders_down_mid_up(sd_pipe, sdxl_pipe):
    for pipe in (sd_pipe, sdxl_pipe):
        tc = attnscope.trace(pipe)
        blocks = [l.name.split(".")[0] for l in tc.layers]
        order = [{"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[b] for b in blocks]
        assert order == sorted(order)
        offsets = [l.head_offset for l in tc.layers]
        assert offsets == [sum(l.heads for l in tc.layers[:i]) for i in range(len(tc.layers))]


def test_hooks_removed_after_exception(sd_pipe):
    def boom(pipe, step, timestep, kwargs):
        if step == 1:
            raise RuntimeError("boom")
        return kwargs

    before = hooks_left(sd_pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with attnscope.trace(sd_pipe):
            run(sd_pipe, callback_on_step_end=boom)
    assert hooks_left(sd_pipe) == before == 0
    assert torch._C._len_torch_function_stack() == 0
    plain = run(sd_pipe).images  # pipeline still works untraced
    assert plain.shape == (1, 32, 32, 3)


def test_processor_without_sdpa_is_refused_clearly(sd_pipe):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    sd_pipe.unet.set_attn_processor(AttnProcessor())
    try:
        with pytest.raises(RuntimeError, match="set_attn_processor"):
            with attnscope.trace(sd_pipe):
                run(sd_pipe, steps=1)
    finally:
        sd_pipe.unet.set_attn_processor(AttnProcessor2_0())
    assert hooks_left(sd_pipe) == 0


def test_unsupported_pipeline_error_is_one_line():
    with pytest.raises(UnsupportedPipelineError) as err:
        attnscope.trace(object())
    assert "\n" not in str(err.value) and "UNet2DConditionModel" in str(err.value)


def test_prompt_embeds_without_tokens(sd_pipe):
    embeds, negative = sd_pipe.encode_prompt("a cat", "cpu", 1, True)
    with attnscope.trace(sd_pipe) as tc:
        sd_pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=2, generator=gen())
    heat = tc.daam()
    assert heat.token_map([1]).shape == (32, 32)
    with pytest.raises(RuntimeError, match="prompt tokens"):
        heat.word("cat")


def test_two_calls_in_one_trace_are_two_generations(sd_pipe):
    with attnscope.trace(sd_pipe) as tc:
        run(sd_pipe, "a cat")
        run(sd_pipe, "a red dog")
    assert len(tc.generations) == 2
    assert tc.daam(0).words() == ["a", "cat"] and tc.daam().words() == ["a", "red", "dog"]
