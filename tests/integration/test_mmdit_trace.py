"""Tracing SD3, SD3.5 and Flux (MM-DiT joint attention) on tiny random pipelines: the invariants of
test_trace.py for the joint-attention layout, and DAAM word maps read from it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnscope
from attnscope.adapters import adapter_for
from attnscope.core.tap import AttentionTap
from attnscope.testing import tiny_flux_pipeline, tiny_sd3_pipeline

STEPS = 3
T5_LENGTH = 16  # max_sequence_length passed to the pipelines: keeps the T5 runs short


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def sd35_pipe():
    return tiny_sd3_pipeline(t5=False, dual_attention_layers=(0, 1), qk_norm="rms_norm")


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline()


def run(pipe, prompt="a cat and a giraffe", steps=STEPS, seed=0, **kw):
    generator = kw.pop("generator", None) or torch.Generator().manual_seed(seed)
    if "t5" in [s.name for s in adapter_for(pipe).prompt_segments()]:
        kw.setdefault("max_sequence_length", T5_LENGTH)
    kw.setdefault("height", 32)  # Flux's default size is its sample size × 16 (256 px here): too slow
    kw.setdefault("width", 32)
    return pipe(prompt, num_inference_steps=steps, generator=generator, output_type="np", **kw)


def hooks_left(pipe):
    """Hooks on the modules attnscope hooks (transformers keeps its own on the encoders' layers)."""
    encoders = [m for m in (pipe.text_encoder, pipe.text_encoder_2, getattr(pipe, "text_encoder_3", None)) if m is not None]
    modules = list(pipe.transformer.modules()) + [pipe.vae.decoder] + encoders
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


@pytest.mark.parametrize("name,kw", [("sd3_pipe", {"guidance_scale": 4.0}), ("sd35_pipe", {"guidance_scale": 4.0}),
                                     ("flux_pipe", {}), ("sd3_pipe", {"guidance_scale": 1.0})])
def test_traced_output_equals_untraced(name, kw, request):
    pipe = request.getfixturevalue(name)
    plain = run(pipe, height=32, width=48, **kw).images
    with attnscope.trace(pipe) as tc:
        traced = run(pipe, height=32, width=48, **kw).images
    assert np.array_equal(plain, traced)
    heat = tc.daam()
    assert heat.n_images == 1 and heat.meta["cfg"] == (kw.get("guidance_scale", 0) > 1)
    assert np.array_equal(heat.images[0].numpy(), (traced[0] * 255).round().astype(np.uint8))
    assert hooks_left(pipe) == 0


def test_layers_and_dual_attention(sd35_pipe, flux_pipe):
    sd35 = attnscope.trace(sd35_pipe)
    assert [l.name for l in sd35.layers] == [f"transformer_blocks.{i}.attn" for i in range(3)]  # never attn2
    assert sd35.layers[0].short_name == "joint0.attn"
    flux = attnscope.trace(flux_pipe)
    assert [l.short_name for l in flux.layers] == ["joint0.attn", "joint1.attn", "single0.attn", "single1.attn"]
    assert [l.head_offset for l in flux.layers] == [0, 2, 4, 6]
    single = attnscope.trace(flux_pipe, layers="single_transformer_blocks.*", heads=[1])
    assert [l.block for l in single.layers] == ["single", "single"]


def _reference_probs(pipe, layer_name, run_kwargs, cfg):
    """Conditional image-query probabilities over *all* keys, from q and k at the SDPA call,
    computed with plain torch (summed over steps): ``(images, heads, keys, image queries)``."""
    adapter = adapter_for(pipe)
    module = dict((info.name, m) for info, m in adapter.attention_layers())[layer_name]
    total = []

    def observe(q, k, mask, scale):
        n = q.shape[0] // 2 if cfg else 0
        probs = (q[n:].float() @ k[n:].float().transpose(-1, -2) * scale).softmax(-1)  # (B, H, Q, K)
        total.append(probs.transpose(-1, -2))

    tap = AttentionTap(observe)
    with attnscope.trace(pipe, keep_padding=True) as tc:  # this tap nests inside the trace's own
        handles = [module.register_forward_pre_hook(lambda *a: None if tap.__enter__() else None),
                   module.register_forward_hook(lambda *a: tap.__exit__(None, None, None), prepend=True)]
        try:
            run(pipe, **run_kwargs)
        finally:
            for h in handles:
                h.remove()
    return torch.stack(total).sum(0), tc


@pytest.mark.parametrize("name,kw,cfg", [("sd3_pipe", {"guidance_scale": 4.0}, True), ("flux_pipe", {}, False)])
def test_stored_block_is_the_models_softmax(name, kw, cfg, request):
    """keep_padding: stored prompt-key probabilities plus the image-key mass sum to 1 per image query;
    the stored block equals the image-query → prompt-key block of the full softmax."""
    pipe = request.getfixturevalue(name)
    layer = "transformer_blocks.1.attn"
    full, tc = _reference_probs(pipe, layer, dict(kw, height=32, width=48), cfg)
    heat = tc.daam()
    info = next(l for l in heat.layers if l.name == layer)
    stored = heat.maps[layer].flatten(-2)  # (images, heads, text keys, image queries)
    pixels = info.height * info.width
    image_first = adapter_for(pipe).image_first
    image_keys = full[:, :, :pixels] if image_first else full[:, :, -pixels:]
    queries = slice(0, pixels) if image_first else slice(full.shape[-1] - pixels, None)
    text_keys = full[:, :, pixels:] if image_first else full[:, :, :-pixels]
    torch.testing.assert_close(stored, text_keys[..., queries], atol=1e-5, rtol=1e-4)
    mass = stored.sum(2) + image_keys[..., queries].sum(2)
    torch.testing.assert_close(mass, torch.full_like(mass, STEPS), atol=1e-4, rtol=0)


def test_sd3_tokens_are_clip_then_t5(sd3_pipe, tmp_path):
    with attnscope.trace(sd3_pipe) as tc:
        run(sd3_pipe, guidance_scale=4.0)
    gen = tc.generation()
    heat = tc.daam()
    clip = sd3_pipe.tokenizer.tokenize("a cat and a giraffe")
    t5 = sd3_pipe.tokenizer_3.tokenize("a cat and a giraffe")
    # padding excluded: CLIP start + tokens + end, then T5 tokens + end
    assert heat.tokens[0] == ["<|startoftext|>", *clip, "<|endoftext|>", *t5, "</s>"]
    assert gen.token_sources(0) == ["clip"] * (len(clip) + 2) + ["t5"] * (len(t5) + 1)
    assert heat.sources(0) == gen.token_sources(0)  # the result carries the labels, also through a file
    assert attnscope.load(heat.save(tmp_path / "heat")).sources(0) == gen.token_sources(0)
    giraffe = heat.word_tokens(0)[-1]
    assert giraffe.text == "giraffe" and [heat.tokens[0][t] for t in giraffe.tokens] == ["gir", "a", "f", "f", "e</w>", "▁gir", "affe"]
    assert heat.words(0) == ["a", "cat", "and", "a", "giraffe"]  # each word once, both encoders' tokens
    # keep_padding stores every text key: 77 CLIP positions then the T5 positions
    with attnscope.trace(sd3_pipe, keep_padding=True) as tc2:
        run(sd3_pipe, guidance_scale=4.0)
    assert next(iter(tc2.daam().maps.values())).shape[2] == sd3_pipe.tokenizer.model_max_length + T5_LENGTH


def test_flux_tokens_are_t5(flux_pipe):
    with attnscope.trace(flux_pipe) as tc:
        run(flux_pipe)
    heat = tc.daam()
    assert heat.tokens[0][:7] == ["▁a", "▁cat", "▁and", "▁a", "▁gir", "affe", "</s>"]
    assert next(iter(heat.maps.values())).shape[2] == 7  # padding excluded
    assert heat.words(0) == ["a", "cat", "and", "a", "giraffe"] and heat.word_tokens(0)[-1].tokens == (4, 5)
    assert set(heat.sources(0)) == {"t5"} and len(heat.sources(0)) == len(heat.tokens[0])


@pytest.mark.parametrize("name,kw", [("sd3_pipe", {"guidance_scale": 4.0}), ("flux_pipe", {})])
def test_batch_maps_equal_single_runs(name, kw, request):
    pipe = request.getfixturevalue(name)
    prompts = ["a cat and a giraffe", "a red dog with a hat"]
    with attnscope.trace(pipe) as tc:
        run(pipe, prompts, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw)
    batch = tc.daam()
    for i, prompt in enumerate(prompts):
        with attnscope.trace(pipe) as one:
            run(pipe, prompt, seed=i, **kw)
        single = one.daam()
        assert batch.words(i) == single.words(0)
        for word in single.words(0):
            torch.testing.assert_close(batch.word(word, image=i), single.word(word), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("name,kw", [("sd3_pipe", {"guidance_scale": 4.0}), ("flux_pipe", {})])
def test_images_per_prompt_and_non_square(name, kw, request):
    pipe = request.getfixturevalue(name)
    seen = {}
    block = pipe.transformer.transformer_blocks[0]
    handle = block.register_forward_pre_hook(lambda m, a, k: seen.update(n=k["hidden_states"].shape[1]),
                                             with_kwargs=True)
    try:
        with attnscope.trace(pipe, keep_steps=True) as tc:
            run(pipe, ["a cat", "a red dog"], num_images_per_prompt=2, height=48, width=32, **kw)
    finally:
        handle.remove()
    heat = tc.daam()
    assert heat.n_images == 4 and heat.prompt_of_image == [0, 0, 1, 1]
    assert heat.words(3) == ["a", "red", "dog"]
    assert heat.latent_hw == (24, 16) and heat.image_hw == (48, 32)
    for layer in heat.layers:
        assert (layer.height, layer.width) == (12, 8) and layer.height * layer.width == seen["n"]
    assert heat.word("dog", image=2).shape == (48, 32)
    assert not torch.allclose(heat.word("cat", image=0), heat.word("cat", image=1))
    for name_, maps in heat.maps.items():
        torch.testing.assert_close(heat.per_step[name_].sum(0), maps, atol=1e-5, rtol=1e-5)


def test_steps_heads_and_layers(flux_pipe):
    with attnscope.trace(flux_pipe, keep_steps=True) as full:
        run(flux_pipe, steps=4)
    with attnscope.trace(flux_pipe, steps=range(1, 3), heads=[0], layers=["joint1.attn", "single*"]) as part:
        run(flux_pipe, steps=4)
    a, b = full.daam(), part.daam()
    assert b.meta["steps_read"] == [1, 2] and [l.name for l in b.layers] == [l.name for l in a.layers[1:]]
    for name, maps in b.maps.items():
        torch.testing.assert_close(maps[:, 0], a.per_step[name][1:3, :, 0].sum(0), atol=1e-5, rtol=1e-5)
    only_single = a.word("cat", layers=["single_transformer_blocks.*"])
    assert not torch.allclose(only_single, a.word("cat", layers=["transformer_blocks.*"]))


def test_hooks_removed_after_exception(flux_pipe):
    def boom(pipe, step, timestep, kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attnscope.trace(flux_pipe):
            run(flux_pipe, callback_on_step_end=boom)
    assert hooks_left(flux_pipe) == 0 and torch._C._len_torch_function_stack() == 0


def test_processor_without_sdpa_is_refused_clearly(sd3_pipe):
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    class NoSDPA(JointAttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            sdpa = F.scaled_dot_product_attention
            try:
                F.scaled_dot_product_attention = lambda q, k, v, **kw: (q @ k.transpose(-1, -2)).softmax(-1) @ v
                return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
            finally:
                F.scaled_dot_product_attention = sdpa

    sd3_pipe.transformer.set_attn_processor(NoSDPA())
    try:
        with pytest.raises(RuntimeError, match="JointAttnProcessor2_0"):
            with attnscope.trace(sd3_pipe):
                run(sd3_pipe, steps=1)
    finally:
        sd3_pipe.transformer.set_attn_processor(JointAttnProcessor2_0())
    assert hooks_left(sd3_pipe) == 0


@pytest.mark.parametrize("name,extra", [("flux_pipe", {"negative_prompt": "a dog", "true_cfg_scale": 2.0}),
                                        ("sd3_pipe", {"guidance_scale": 4.0, "skip_guidance_layers": [1],
                                                     "skip_layer_guidance_stop": 0.9})])
def test_extra_guidance_passes_are_not_read(name, extra, request):
    """Flux's true CFG and SD3's skip-layer guidance call the transformer twice in a step: only the
    conditional pass is read, so step 0 equals a run without them."""
    pipe = request.getfixturevalue(name)
    plain = run(pipe, **extra).images
    calls = []
    with attnscope.trace(pipe, keep_steps=True) as tc:
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            traced = run(pipe, **extra).images
        finally:
            handle.remove()
    assert np.array_equal(plain, traced) and len(calls) > STEPS  # the extra passes ran
    with attnscope.trace(pipe, keep_steps=True) as base:
        run(pipe, **{k: v for k, v in extra.items() if k == "guidance_scale"})
    heat, ref = tc.daam(), base.daam()
    assert heat.meta["steps_read"] == list(range(STEPS)) and len(heat.meta["timesteps"]) == STEPS
    for layer, maps in ref.per_step.items():
        torch.testing.assert_close(heat.per_step[layer][0], maps[0], atol=1e-6, rtol=1e-5)
