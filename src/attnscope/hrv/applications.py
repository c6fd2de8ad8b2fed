"""The HRV paper's applications as functions: polysemous-word correction and word-swap editing.

Both run on any UNet pipeline with an HRV for it (SD 1.x / SDXL with the published matrices, or one
built with :func:`attnscope.hrv.build`); HRV-weighted Attend-and-Excite is in :mod:`.excite`.

Example (Stable Diffusion 1.4 with the published HRV):
    >>> hrv = attnscope.hrv.load_published("hrv_sd_v1_4.npy", pipe)                          # doctest: +SKIP
    >>> out = correct_polysemy(pipe, "a vase in lavender color", "lavender", hrv,
    ...                        wanted="Color", unwanted="Plants")                              # doctest: +SKIP
    >>> source, edited = word_swap(pipe, "a red car", "a wooden car", hrv, concept="Material").images  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from ..control.edits import in_window
from ..control.hooks import CallState, LayerHooks, SDPACall
from ..control.steer import steer
from ..core.tokens import words_from_tokens
from .edits import adjust
from .vectors import HeadRelevance

#: Prompt-to-Prompt's usual share of steps whose cross-attention is injected from the source.
CROSS_REPLACE = (0.0, 0.8)
#: The HRV paper strengthens the edited word within the first 80 % of steps.
STRENGTHEN_STEPS = (0.0, 0.8)


def correct_polysemy(pipe: Any, prompt: str, word: str, hrv: HeadRelevance, *, wanted: str, unwanted: str,
                     steps=None, **pipe_kwargs):
    """Generate ``prompt`` with ``word`` adjusted toward concept ``wanted`` and away from ``unwanted``
    (``w = 2·HRV_wanted − HRV_unwanted`` on its attention); returns the pipeline's output."""
    with steer(pipe, adjust(hrv, word, plus=wanted, minus=unwanted, steps=steps)):
        return pipe(prompt, **pipe_kwargs)


def _words(tokenizer, prompt: str):
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return len(ids), words_from_tokens(tokenizer.convert_ids_to_tokens(ids), special)


def swap_mapping(tokenizer, source: str, target: str) -> tuple[torch.Tensor, list[tuple[str, list[int]]]]:
    """``(M, swapped)``: ``M`` ``(target tokens, source tokens)`` carries the source's attention columns
    to the target's token positions (a swapped word whose token count differs takes the mean of the
    source word's columns); ``swapped`` lists the target's new words with their token positions.

    >>> from attnscope.testing import tiny_clip_tokenizer
    >>> M, swapped = swap_mapping(tiny_clip_tokenizer(), "a red cat", "a blue cat")
    >>> swapped, M.shape
    ([('blue', [2])], torch.Size([77, 77]))
    """
    n_src, src = _words(tokenizer, source)
    n_tgt, tgt = _words(tokenizer, target)
    if len(src) != len(tgt):
        raise ValueError(f"A word swap needs prompts with the same number of words ('a red car' -> 'a blue car'); "
                         f"the source has {len(src)}, the target {len(tgt)}.")
    swapped = [(b.text, list(b.tokens)) for a, b in zip(src, tgt) if a.text.casefold() != b.text.casefold()]
    if not swapped:
        raise ValueError("The source and target prompts have the same words; change at least one word.")
    mapping = torch.zeros(n_tgt, n_src)
    for a, b in zip(src, tgt):
        if len(a.tokens) == len(b.tokens):
            mapping[list(b.tokens), list(a.tokens)] = 1.0
        else:
            for t in b.tokens:
                mapping[t, list(a.tokens)] = 1.0 / len(a.tokens)
    in_words = lambda words: {t for w in words for t in w.tokens}  # noqa: E731
    rest_src = [p for p in range(n_src) if p not in in_words(src)]
    rest_tgt = [p for p in range(n_tgt) if p not in in_words(tgt)]
    for i, p in enumerate(rest_tgt):
        mapping[p, rest_src[min(i, len(rest_src) - 1)]] = 1.0
    return mapping, swapped


class _WordSwap:
    """At each cross-attention call: the target's attention is the source's (mapped) during
    ``cross_steps``, and the swapped words' columns are scaled by HRV weights during ``boost_steps``."""

    def __init__(self, mapping, boosts, cross_steps, boost_steps):
        self.mapping, self.boosts = mapping, boosts
        self.cross_steps, self.boost_steps = cross_steps, boost_steps

    def __call__(self, layer, state: CallState, call: SDPACall):
        replace = in_window(self.cross_steps, state.index, state.total)
        boost = bool(self.boosts) and in_window(self.boost_steps, state.index, state.total)
        if not (replace or boost):
            return None
        if state.n_images != 2:
            raise ValueError(f"A word swap generates one source and one target image; got {state.n_images} images.")
        out = call.original().clone()
        source, target = state.conditional_rows().start, state.conditional_rows().start + 1
        if replace:
            probs = torch.matmul(call.probabilities(source), self.mapping.T.to(out.device))
        else:
            probs = call.probabilities(target)
        if boost:
            for positions, weights in self.boosts:
                w = weights[layer.head_offset : layer.head_offset + layer.heads].to(probs.device)
                probs[..., positions] *= w[:, None, None]
        out[target] = torch.matmul(probs, call.value[target].float()).to(out.dtype)
        return out


def word_swap(pipe: Any, source: str, target: str, hrv: HeadRelevance | None = None, *,
              concept: str | None = None, cross_steps=CROSS_REPLACE, strengthen_steps=STRENGTHEN_STEPS,
              seed: int = 0, **pipe_kwargs):
    """Prompt-to-Prompt word swap: generate ``source`` and the edited ``target`` from the same noise,
    the target reusing the source's cross-attention maps (layout kept) during ``cross_steps``, and —
    with an HRV — its new word strengthened by ``HRV_concept`` during ``strengthen_steps``.

    ``concept`` defaults to the concept whose example words hold the new word. Only cross-attention
    is injected (no self-attention replacement). Returns the pipeline's output: images
    ``[source, edited]``.
    """
    from ..adapters import adapter_for

    tokenizer = adapter_for(pipe).text_encoder()[1]
    mapping, swapped = swap_mapping(tokenizer, source, target)
    boosts = []
    if hrv is not None:
        for word, positions in swapped:
            boosts.append((positions, hrv.weights(concept if concept is not None else hrv.concept_of(word))))
    hooks = LayerHooks(pipe, _WordSwap(mapping, boosts, cross_steps, strengthen_steps))
    if hrv is not None:
        hrv.check_layers(hooks.layers)
    generators = [torch.Generator().manual_seed(seed) for _ in range(2)]
    with hooks:
        return pipe([source, target], generator=generators, **pipe_kwargs)
