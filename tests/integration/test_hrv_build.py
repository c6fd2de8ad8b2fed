"""HRV construction on tiny SD and SDXL pipelines: the vote rule, a side computation that leaves images
bit-identical, shards that merge exactly, checkpoints that resume without double counting."""

import pytest
import torch

import attnscope
from attnscope.control.hooks import LayerHooks, model_layers
from attnscope.hrv.concepts import encode_words
from attnscope.hrv.construct import VoteCounter

CONCEPTS = {"colour": ["red", "blue"], "animal": ["cat", "giraffe", "zebra"], "thing": ["hat", "photo"]}
PROMPTS = ["a red cat", "a blue dog", "a photo of a hat"]
STEPS = dict(num_inference_steps=2)


@pytest.fixture(scope="module")
def full(sd_pipe):
    return attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS, **STEPS)


def test_rows_mean_one_and_every_head_votes_once_per_image_and_call(sd_pipe, full):
    n_heads = sum(l.heads for l, _ in model_layers(sd_pipe)[1])
    assert full.matrix.shape == (3, n_heads) and full.concepts == list(CONCEPTS)
    assert torch.allclose(full.matrix.mean(dim=1), torch.ones(3))
    assert (full.counts.sum(dim=0) == len(PROMPTS) * STEPS["num_inference_steps"]).all()
    assert full.heads[0] == ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 0)


def test_a_split_word_keeps_all_its_tokens(sd_pipe):
    tokenizer = sd_pipe.tokenizer
    pieces = len(tokenizer.tokenize("giraffe"))
    encoded = encode_words(sd_pipe, CONCEPTS, tokenizer)
    (a, b), (c, d) = encoded.spans["animal"][:2]
    assert pieces > 1 and (b - a, d - c) == (1, pieces) and encoded.start is not None


def test_the_vote_follows_the_written_rule(sd_pipe):
    """One layer, one call, recomputed by hand: keys through to_k, softmax per head, mean over pixels,
    mean over each word's tokens, argmax."""
    _, found = model_layers(sd_pipe)
    info, module = found[1]
    encoded = encode_words(sd_pipe, CONCEPTS, sd_pipe.tokenizer)
    counter = VoteCounter(found, encoded, list(CONCEPTS), seed=0)
    counter.image_ids = [7]
    from attnscope.control.hooks import CallState, SDPACall
    import torch.nn.functional as F

    state = CallState(run=0, index=3, batch=1)
    counter.on_call(state)
    query = torch.randn(1, info.heads, 16, module.to_k.out_features // info.heads)
    counter.handle(info, state, SDPACall(F.scaled_dot_product_attention, (query, query, query), {}))
    index, valid, mean = counter._draw
    rows = index[0][valid[0]]
    context = torch.cat([encoded.start[None], encoded.embeddings])[rows]
    keys = module.to_k(context[None]).view(1, len(rows), info.heads, -1).transpose(1, 2)
    probs = (query @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5).softmax(-1).mean(2)[0]  # (heads, L)
    spans, position = [], 1
    for name in CONCEPTS:  # which word was drawn per concept follows from the averaging matrix
        width = int((mean[0, :, len(spans)] > 0).sum())
        spans.append((position, position + width))
        position += width
    scores = torch.stack([probs[:, a:b].mean(1) for a, b in spans], dim=1)
    expected = F.one_hot(scores.argmax(1), 3).T
    assert torch.equal(counter.counts[:, info.head_offset : info.head_offset + info.heads], expected)


def test_building_leaves_the_generation_bit_identical(sd_pipe):
    seen = []
    record = lambda pipe, i, t, kw: seen.append(kw["latents"].clone()) or {}  # noqa: E731
    attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS[:1], callback_on_step_end=record, **STEPS)
    plain = []
    sd_pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="latent",
            callback_on_step_end=lambda pipe, i, t, kw: plain.append(kw["latents"].clone()) or {}, **STEPS)
    assert len(seen) == len(plain) == 2 and all(torch.equal(a, b) for a, b in zip(seen, plain))


def test_disjoint_shards_merge_to_the_full_counts(sd_pipe, full):
    parts = [attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS, shard=(i, 2), **STEPS) for i in range(2)]
    merged = attnscope.hrv.merge(parts)
    assert torch.equal(merged.counts, full.counts) and merged.meta["done"] == [0, 1, 2]
    with pytest.raises(ValueError, match="counted in two parts"):
        attnscope.hrv.merge([parts[0], parts[0]])


def test_an_interrupted_build_resumes_without_double_counting(sd_pipe, full, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(done, total):
        if done == 1:
            raise Stop

    def stop_in_second(pipe, i, t, kw):
        if i == 1:
            raise Stop
        return {}

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS, checkpoint=ckpt, progress=stop_after_first, **STEPS)
    assert attnscope.load(ckpt).meta["done"] == [0]
    with pytest.raises(Stop):  # stopped midway through prompt 1: its votes must not be kept
        attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS, checkpoint=ckpt, callback_on_step_end=stop_in_second, **STEPS)
    assert attnscope.load(ckpt).meta["done"] == [0]
    resumed = attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS, checkpoint=ckpt, **STEPS)
    assert torch.equal(resumed.counts, full.counts) and resumed.meta["done"] == [0, 1, 2]
    with pytest.raises(ValueError, match="other concepts, prompts"):
        attnscope.hrv.build(sd_pipe, CONCEPTS, PROMPTS[:2], checkpoint=ckpt, **STEPS)


def test_sdxl_builds_over_its_heads(sdxl_pipe):
    hrv = attnscope.hrv.build(sdxl_pipe, CONCEPTS, PROMPTS[:1], **STEPS)
    n_heads = sum(l.heads for l, _ in model_layers(sdxl_pipe)[1])
    assert hrv.matrix.shape == (3, n_heads) and torch.allclose(hrv.matrix.mean(1), torch.ones(3))


def test_bad_concepts_are_refused(sd_pipe):
    with pytest.raises(ValueError, match="at least two concepts"):
        attnscope.hrv.build(sd_pipe, {"colour": ["red"]}, PROMPTS)
    with pytest.raises(ValueError, match="non-empty"):
        attnscope.hrv.build(sd_pipe, {"colour": ["red"], "shape": []}, PROMPTS)
    with pytest.raises(ValueError, match="prompts= is empty"):
        attnscope.hrv.build(sd_pipe, CONCEPTS, [])


def test_hooks_are_gone_after_a_build(sd_pipe):
    _, found = model_layers(sd_pipe)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for _, m in found)
    assert not LayerHooks(sd_pipe, lambda *a: None)._handles
