"""ConceptAttention on tiny SD3 and Flux pipelines: images unchanged, maps equal to an independent
re-computation of the concept stream from the blocks' weights, multi-token concepts, selection, files
and bad input."""

import math

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

import attnscope
from attnscope.adapters.mmdit import ConceptEncodingError
from attnscope.testing import tiny_flux_pipeline, tiny_sd3_pipeline

CONCEPTS = ["cat", "giraffe", "background"]  # "giraffe" is several tokens in every tokenizer here
PROMPTS = ["a cat and a giraffe", "a dog"]


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline()


def run(pipe, prompt=PROMPTS, steps=2, **kw):
    kw.setdefault("generator", [torch.Generator().manual_seed(i) for i in range(len(prompt))])
    if type(pipe).__name__.startswith("StableDiffusion3"):
        kw.setdefault("guidance_scale", 4.0)
    return pipe(prompt, num_inference_steps=steps, height=32, width=48, max_sequence_length=16, output_type="np", **kw)


def _content(tokenizer, word):
    ids = tokenizer(word, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    return [i for i, t in enumerate(ids) if t not in tokenizer.all_special_ids]


def reference_concept_maps(pipe, block_inputs, n_images, cfg):
    """ConceptAttention's output-space maps recomputed from the blocks' weights with explicit softmaxes
    (no attnscope code): ``(images, concepts, patches)`` averaged over blocks for one denoising call."""
    flux = type(pipe).__name__ == "FluxPipeline"
    tr = pipe.transformer
    with torch.no_grad():
        if flux:
            features = pipe.encode_prompt(prompt=CONCEPTS, prompt_2=CONCEPTS, max_sequence_length=16)[0]
            where = [[(w, i) for i in _content(pipe.tokenizer_2, c)] for w, c in enumerate(CONCEPTS)]
        else:
            features = pipe.encode_prompt(CONCEPTS, CONCEPTS, CONCEPTS, do_classifier_free_guidance=False,
                                          max_sequence_length=16)[0]
            clip = pipe.tokenizer.model_max_length
            where = [[(w, i) for i in _content(pipe.tokenizer, c)] + [(w, clip + i) for i in _content(pipe.tokenizer_3, c)]
                     for w, c in enumerate(CONCEPTS)]
        owner = [w for w, spots in enumerate(where) for _ in spots]
        concepts = tr.context_embedder(torch.stack([features[w, i] for spots in where for w, i in spots]))
        concepts = concepts.expand(n_images, -1, -1)
        rows = slice(n_images, 2 * n_images) if cfg else slice(0, n_images)
        maps = []
        for block, (x, text, temb, rotary) in zip(tr.transformer_blocks, block_inputs):
            x, text, temb = x[rows], text[rows], temb[rows]
            attn, heads = block.attn, block.attn.heads

            def split(t):
                return t.view(t.shape[0], t.shape[1], heads, -1)

            def qkv(h, to_q, to_k, to_v, nq, nk):
                q, k, v = split(to_q(h)), split(to_k(h)), split(to_v(h))
                return (nq(q) if nq else q), (nk(k) if nk else k), v

            xn = block.norm1(x, emb=temb)[0]
            pre_only = getattr(block, "context_pre_only", False)
            tn = block.norm1_context(text, temb) if pre_only else block.norm1_context(text, emb=temb)[0]
            if pre_only:
                cn, mods = block.norm1_context(concepts, temb), None
            else:
                cn, *mods = block.norm1_context(concepts, emb=temb)
            qx, kx, vx = qkv(xn, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
            qt, kt, vt = qkv(tn, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q, attn.norm_added_k)
            qc, kc, vc = qkv(cn, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q, attn.norm_added_k)
            if flux:  # rotary: text positions first, image positions after; concepts at position 0 (identity)
                n = qt.shape[1]
                qt, kt = (apply_rotary_emb(t, tuple(r[:n] for r in rotary), sequence_dim=1) for t in (qt, kt))
                qx, kx = (apply_rotary_emb(t, tuple(r[n:] for r in rotary), sequence_dim=1) for t in (qx, kx))

            def attend(q, k, v):
                w = (torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])).softmax(-1)
                return torch.einsum("bhqk,bkhd->bqhd", w, v).flatten(2)

            ox = attend(qx, torch.cat([kx, kt], 1), torch.cat([vx, vt], 1))
            oc = attend(qc, torch.cat([kc, kx], 1), torch.cat([vc, vx], 1))
            scores = oc @ ox.transpose(1, 2)  # (n, concept tokens, patches)
            per_concept = torch.stack([scores[:, [t for t, o in enumerate(owner) if o == c]].mean(1)
                                       for c in range(len(CONCEPTS))], 1)
            maps.append(per_concept.softmax(1))
            if mods:
                gate, shift, scale, gate_mlp = mods
                concepts = concepts + gate[:, None] * attn.to_add_out(oc)
                normed = block.norm2_context(concepts) * (1 + scale[:, None]) + shift[:, None]
                concepts = concepts + gate_mlp[:, None] * block.ff_context(normed)
        return torch.stack(maps).mean(0)


@pytest.mark.parametrize("name", ["flux_pipe", "sd3_pipe"])
def test_images_unchanged_and_maps_equal_a_reference(name, request):
    pipe = request.getfixturevalue(name)
    plain = run(pipe, steps=1).images
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k: inputs.append((k["hidden_states"], k["encoder_hidden_states"],
                                                                          k["temb"], k.get("image_rotary_emb"))),
                                         with_kwargs=True)
             for b in pipe.transformer.transformer_blocks]
    try:
        with attnscope.trace(pipe, concepts=CONCEPTS) as tc:
            traced = run(pipe, steps=1).images
    finally:
        for h in hooks:
            h.remove()
    assert np.array_equal(plain, traced)  # the concept stream is never seen by prompt or image tokens
    ca = tc.concept_attention()
    expected = reference_concept_maps(pipe, inputs, len(PROMPTS), cfg=name == "sd3_pipe")
    torch.testing.assert_close(ca.saliency.flatten(2), expected.float(), atol=1e-5, rtol=1e-4)


def test_multi_token_concepts_keep_every_token(sd3_pipe, flux_pipe):
    with attnscope.trace(flux_pipe, layers=[], concepts=CONCEPTS) as tc:
        run(flux_pipe, steps=1)
    assert tc.concept_attention().tokens[1] == [["▁gir", "t5"], ["affe", "t5"]]
    with attnscope.trace(sd3_pipe, layers=[], concepts=CONCEPTS) as tc:
        run(sd3_pipe, steps=1)
    giraffe = tc.concept_attention().tokens[1]
    assert [t for t, _ in giraffe] == ["gir", "a", "f", "f", "e</w>", "▁gir", "affe"]  # CLIP tokens, then T5 tokens
    assert [s for _, s in giraffe] == ["clip"] * 5 + ["t5"] * 2


def test_maps_selection_and_segments(flux_pipe):
    with attnscope.trace(flux_pipe, concepts=CONCEPTS, keep_steps=True) as tc:
        run(flux_pipe, steps=3)
    ca = tc.concept_attention()
    sal = ca.saliency
    assert sal.shape == (2, 3, 8, 12) and ca.n_images == 2
    torch.testing.assert_close(sal.sum(1), torch.ones(2, 8, 12))
    for space in ("output", "value", "cross_attention", "query"):
        torch.testing.assert_close(ca.maps(space=space).sum(1), torch.ones(2, 8, 12))
    assert not torch.allclose(ca.maps(space="value"), sal) and not torch.allclose(ca.maps(space="cross_attention"), sal)
    circle = ca.concept("giraffe", image=1)
    assert circle.shape == (32, 48) and 0 <= circle.min() and circle.max() <= 1
    seg = ca.segment(image=0)
    assert seg.dtype == torch.long and seg.shape == (32, 48) and set(seg.unique().tolist()) <= {0, 1, 2}
    stacked = torch.stack([ca.concept(c, image=0) for c in CONCEPTS])
    assert torch.equal(seg, stacked.argmax(0))
    assert ca.mask("cat", image=0).sum() > 0  # thresholded at its mean
    # layers: the mean of per-block maps; steps: the mean of per-step maps
    per_layer = [ca.maps(layers=[l.name]) for l in ca.layers]
    assert [l.short_name for l in ca.layers] == ["joint0.attn", "joint1.attn"]  # double-stream blocks only
    torch.testing.assert_close(sal, sum(per_layer) / len(per_layer))
    torch.testing.assert_close(sal, sum(ca.maps(step=s) for s in range(3)) / 3, atol=1e-6, rtol=1e-5)
    with attnscope.trace(flux_pipe, concepts=CONCEPTS, steps=(1, 2)) as tc2:
        run(flux_pipe, steps=3)
    one = tc2.concept_attention(layers="joint1.attn")
    assert one.meta["steps_read"] == [1]
    torch.testing.assert_close(one.saliency, ca.maps(step=1, layers="joint1.attn"), atol=1e-6, rtol=1e-5)
    after = ca.maps(softmax="after_mean")
    torch.testing.assert_close(after.sum(1), torch.ones(2, 8, 12))
    with pytest.raises(ValueError, match="No attention layer matches"):
        tc.concept_attention(layers="single*")
    with pytest.raises(KeyError, match="cat, giraffe, background"):
        ca.concept("dog")


def test_save_and_load(flux_pipe, tmp_path):
    with attnscope.trace(flux_pipe, layers=[], concepts=CONCEPTS) as tc:
        run(flux_pipe, steps=1)
    ca = tc.concept_attention(space="value", seed=0)
    back = attnscope.load(ca.save(tmp_path / "ca"))
    assert back.concepts == CONCEPTS and back.meta["seed"] == 0 and back.defaults["space"] == "value"
    torch.testing.assert_close(back.saliency, ca.saliency)
    assert torch.equal(back.segment(1), ca.segment(1)) and torch.equal(back.images, ca.images)


def test_bad_input_is_one_line(sd_pipe, flux_pipe):
    cases = [([], "is empty"), (["cat", "Cat"], "more than once"), (["cat", ""], "non-empty"),
             (["cat", "Ωmega"], "cannot encode")]
    for concepts, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            attnscope.trace(flux_pipe, concepts=concepts)
        assert "\n" not in str(err.value)
    assert issubclass(ConceptEncodingError, ValueError)
    with pytest.raises(ValueError, match="no joint attention blocks"):
        attnscope.trace(sd_pipe, concepts=["cat"])
    with pytest.raises(TypeError, match="unknown option 'concept'.*concepts"):
        attnscope.trace(flux_pipe, concept=["cat"])
    with attnscope.trace(flux_pipe) as tc:
        run(flux_pipe, steps=1)
    with pytest.raises(RuntimeError, match="concepts=") as err:
        tc.concept_attention()


def test_no_hook_survives_an_exception(flux_pipe):
    def boom(pipe, step, timestep, kwargs):
        raise RuntimeError("boom")

    modules = list(flux_pipe.transformer.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with attnscope.trace(flux_pipe, concepts=CONCEPTS):
            run(flux_pipe, callback_on_step_end=boom)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules) == 0
    assert torch._C._len_torch_function_stack() == 0


def test_concept_attention_alone_reads_no_prompt_attention(flux_pipe):
    """``layers=[]`` traces no attention layer for DAAM, so a trace pays only for the concept stream;
    the concept maps are the same as with every layer read."""
    with attnscope.trace(flux_pipe, layers=[], concepts=["cat", "background"]) as alone:
        flux_pipe("a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    with attnscope.trace(flux_pipe, concepts=["cat", "background"]) as both:
        flux_pipe("a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert alone.generation().sums == {} and both.generation().sums
    torch.testing.assert_close(alone.concept_attention().saliency, both.concept_attention().saliency)
