"""HRV construction: every cross-attention head votes, at every denoising call, for the concept it
attends to most (methods.md §2).

For each generated image and denoising call one example word per concept is drawn; the words'
token embeddings (each word encoded on its own, one start token in front) go through each layer's
own key projection, and the layer's conditional queries attend to that key sequence:
``softmax(QKᵀ/√d)`` per head, averaged over pixels, then over each word's tokens — one score per
(head, concept); the head's vote goes to the argmax. ``count[c, h]`` sums the votes; the HRV is
its count normalisation (:class:`~attnscope.hrv.vectors.HeadRelevance`). The pipeline's own
attention runs untouched, so generated images are bit-identical to untraced ones.

Draws depend only on (seed, prompt index, call), and prompt ``i`` always uses the noise seed
``seed + i``, so disjoint prompt shards (``shard=(i, n)``) give counts that :func:`merge` adds up to
the unsharded build exactly (with ``batch=1``: a batched denoiser's floats can differ in the last bit).
With ``checkpoint=``, counts and the prompts done are saved atomically after every batch and a
rerun with the same settings resumes there; a batch interrupted midway is redone, never counted twice.

Example:
    >>> hrv = build(pipe, concepts={"colour": ["red", "blue"], "shape": ["circle", "square"]},   # doctest: +SKIP
    ...             prompts=["a red circle", "a blue square"], num_inference_steps=20)
    >>> hrv.top_heads("shape", 5)                                                              # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .._version import __version__
from ..control.hooks import CallState, LayerHooks, SDPACall, model_layers
from .concepts import DEFAULT_CONCEPTS, EncodedWords, check_concepts, encode_words
from .vectors import HeadRelevance, load_relevance


class VoteCounter:
    """The per-call handler of HRV construction: key tables per layer, one draw per image and call."""

    def __init__(self, found, encoded: EncodedWords, concepts: list[str], seed: int):
        self.concepts, self.seed = concepts, seed
        self.spans = [encoded.spans[c] for c in concepts]
        self.has_start = encoded.start is not None
        context = encoded.embeddings if encoded.start is None else torch.cat([encoded.start[None], encoded.embeddings])
        self.tables = {info.name: _key_table(module, context) for info, module in found}
        self.n_heads = sum(info.heads for info, _ in found)
        device = next(iter(self.tables.values())).device
        self.counts = torch.zeros(len(concepts), self.n_heads, dtype=torch.int64, device=device)  # no sync per call
        self.image_ids: list[int] = []
        self._draw: tuple | None = None

    def on_call(self, state: CallState) -> None:
        """Draw one word per concept for every image of this denoising call."""
        offset = 1 if self.has_start else 0
        sequences, averages = [], []
        for image in range(state.n_images):
            rng = np.random.default_rng([self.seed, self.image_ids[image], state.index])
            rows = [0] if self.has_start else []
            average = []
            for spans in self.spans:
                start, stop = spans[int(rng.integers(len(spans)))]
                average.append((len(rows), len(rows) + stop - start))
                rows += range(start + offset, stop + offset)
            sequences.append(rows)
            averages.append(average)
        length = max(len(r) for r in sequences)
        index = torch.zeros(len(sequences), length, dtype=torch.long)
        valid = torch.zeros(len(sequences), length, dtype=torch.bool)
        mean = torch.zeros(len(sequences), length, len(self.concepts))
        for i, (rows, average) in enumerate(zip(sequences, averages)):
            index[i, : len(rows)] = torch.tensor(rows)
            valid[i, : len(rows)] = True
            for c, (a, b) in enumerate(average):
                mean[i, a:b, c] = 1.0 / (b - a)
        device = next(iter(self.tables.values())).device
        self._draw = (index.to(device), valid.to(device), mean.to(device))

    def handle(self, layer, state: CallState, call: SDPACall) -> None:
        with torch.no_grad():
            table = self.tables[layer.name]
            index, valid, mean = self._draw
            query = call.query[state.conditional_rows()].float()                 # (n, H, P, d)
            keys = table[:, index].transpose(0, 1).mul(call.scale)               # (n, H, L, d)
            # key-major scores (n, H, L, P): the softmax over keys and the mean over pixels run along
            # contiguous pixel rows
            probs = torch.matmul(keys, query.transpose(-1, -2))
            probs.masked_fill_(~valid[:, None, :, None], float("-inf"))
            probs.sub_(probs.amax(dim=-2, keepdim=True)).exp_()
            probs.div_(probs.sum(dim=-2, keepdim=True))
            per_token = probs.mean(dim=-1)                                       # (n, H, L)
            per_concept = torch.einsum("nhl,nlc->nhc", per_token, mean)
            votes = torch.nn.functional.one_hot(per_concept.argmax(-1), len(self.concepts)).sum(0)  # (H, C)
            self.counts[:, layer.head_offset : layer.head_offset + layer.heads] += votes.T
        return None


def _key_table(module, context: torch.Tensor) -> torch.Tensor:
    """``(heads, rows, head dim)``: the rows of ``context`` through the layer's own key projection."""
    weight = module.to_k.weight
    with torch.no_grad():
        ctx = context[None].to(device=weight.device, dtype=weight.dtype)
        if getattr(module, "norm_cross", None):
            ctx = module.norm_encoder_hidden_states(ctx)
        key = module.to_k(ctx)
        key = key.view(1, key.shape[1], module.heads, -1).transpose(1, 2)
        if getattr(module, "norm_k", None) is not None:
            key = module.norm_k(key)
    return key[0].float()


def _fingerprint(concepts, prompts, seed, layout, pipe_kwargs) -> str:
    plain = {k: v for k, v in sorted(pipe_kwargs.items()) if isinstance(v, (int, float, str, bool, type(None)))}
    text = json.dumps([concepts, list(prompts), seed, [list(x) for x in layout], plain], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shard_indices(n: int, shard) -> list[int]:
    if shard is None:
        return list(range(n))
    part, parts = (int(x) for x in shard)
    if parts < 1 or not 0 <= part < parts:
        raise ValueError(f"shard={shard!r} must be (i, n) with 0 <= i < n.")
    return list(range(part, n, parts))


def build(pipe: Any, concepts: Mapping[str, Sequence[str]] | None = None, prompts: Sequence[str] = (), *,
          seed: int = 0, batch: int = 1, shard: tuple[int, int] | None = None,
          checkpoint: str | os.PathLike | None = None, clamp: float | None = None,
          progress: Callable[[int, int], None] | None = None, **pipe_kwargs) -> HeadRelevance:
    """Build head relevance vectors for ``pipe`` by generating one image per prompt.

    Args:
        concepts: ``{concept: [example words]}`` (default :data:`~attnscope.hrv.concepts.DEFAULT_CONCEPTS`).
        prompts: ordinary prompts to generate from (the paper: ~1,000–2,100).
        seed: prompt ``i`` uses noise seed ``seed + i``; word draws are seeded from it too.
        batch: prompts per pipeline call.
        shard: ``(i, n)``: only prompts ``i, i+n, i+2n, …``; :func:`merge` adds shards up.
        checkpoint: a folder to save progress to after every batch and to resume from.
        clamp: stored with the result; :meth:`HeadRelevance.weights` clamps at it.
        progress: ``progress(done, total)`` after each batch of this shard.
        pipe_kwargs: passed to every pipeline call (``num_inference_steps``, ``guidance_scale`` …);
            ``output_type`` defaults to ``"latent"`` (the images are not needed).
    """
    from ..adapters import adapter_for

    concepts = check_concepts(DEFAULT_CONCEPTS if concepts is None else concepts)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts= is empty; give the ordinary prompts to generate from.")
    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1.")
    adapter, found = model_layers(pipe, adapter_for(pipe))
    layers = [info for info, _ in found]
    heads = [(l.name, h) for l in layers for h in range(l.heads)]
    fingerprint = _fingerprint(concepts, prompts, seed, [(l.name, l.heads) for l in layers], pipe_kwargs)
    names = list(concepts)
    todo = _shard_indices(len(prompts), shard)
    counts, done = torch.zeros(len(names), len(heads), dtype=torch.int64), set()
    if checkpoint is not None and Path(checkpoint).exists():
        saved = load_relevance(checkpoint)
        if saved.meta.get("fingerprint") != fingerprint or saved.meta.get("shard") != (list(shard) if shard else None):
            raise ValueError(f"The checkpoint {checkpoint} was made with other concepts, prompts, seed, shard or "
                             "settings; resume with the same ones or use a new checkpoint folder.")
        counts, done = saved.counts.clone(), set(saved.meta["done"])
    tokenizer = adapter.text_encoder()[1]
    counter = VoteCounter(found, encode_words(pipe, concepts, tokenizer), names, seed)
    pipe_kwargs.setdefault("output_type", "latent")
    per_prompt = int(pipe_kwargs.get("num_images_per_prompt", 1) or 1)

    def result() -> HeadRelevance:
        meta = {"model": adapter.model_id(), "family": adapter.family, "fingerprint": fingerprint,
                "done": sorted(done), "n_prompts": len(prompts), "shard": list(shard) if shard else None,
                "seed": seed, "settings": {k: v for k, v in pipe_kwargs.items()
                                           if isinstance(v, (int, float, str, bool, type(None)))},
                "attnscope_version": __version__}
        return HeadRelevance.from_counts(counts, names, heads, words=concepts, clamp=clamp, meta=meta)

    remaining = [i for i in todo if i not in done]
    for start in range(0, len(remaining), batch):
        chunk = remaining[start : start + batch]
        counter.counts.zero_()
        counter.image_ids = [i * per_prompt + j for i in chunk for j in range(per_prompt)]
        generators = [torch.Generator().manual_seed(seed + i) for i in chunk for _ in range(per_prompt)]
        with LayerHooks(pipe, counter.handle, on_call=counter.on_call, adapter=adapter):
            pipe([prompts[i] for i in chunk], generator=generators, **pipe_kwargs)
        counts += counter.counts.cpu()
        done.update(chunk)
        if checkpoint is not None:
            result().save(checkpoint)
        if progress is not None:
            progress(len([i for i in todo if i in done]), len(todo))
    return result()


def merge(parts: Sequence[HeadRelevance]) -> HeadRelevance:
    """Add up the counts of HRVs built on disjoint prompt shards with the same settings.

        >>> merge([build(pipe, c, ps, shard=(0, 2)), build(pipe, c, ps, shard=(1, 2))])   # doctest: +SKIP
    """
    parts = list(parts)
    if not parts or any(p.counts is None for p in parts):
        raise ValueError("merge() needs HRVs built by attnscope.hrv.build (with vote counts).")
    first = parts[0]
    for p in parts[1:]:
        if p.concepts != first.concepts or p.heads != first.heads or p.meta.get("fingerprint") != first.meta.get("fingerprint"):
            raise ValueError("These HRVs were built with different concepts, prompts, models or settings; "
                             "only shards of one build merge.")
    seen: set[int] = set()
    for p in parts:
        overlap = seen & set(p.meta["done"])
        if overlap:
            raise ValueError(f"Prompts {sorted(overlap)[:5]} were counted in two parts; merge disjoint shards only.")
        seen |= set(p.meta["done"])
    meta = dict(first.meta, done=sorted(seen), shard=None)
    return HeadRelevance.from_counts(sum(p.counts for p in parts), first.concepts, first.heads,
                                     words=first.words, clamp=first.clamp, meta=meta)
