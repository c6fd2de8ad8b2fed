"""``attnscope.steer(pipe, edit)``: apply attention edits while a pipeline generates.

At each hooked layer's SDPA call the fused kernel runs unchanged; for the heads an active edit
touches, the conditional rows then get the exact correction ``((W − 1) ⊙ A) V`` added, where ``A``
is that call's attention probabilities and ``W`` the edit's weight per (image, head, token). This is
``A' V`` with ``A'_h[:, T] = w_h · A_h[:, T]`` (no renormalisation). Layers and calls an edit does
not touch run exactly as without steering, so an edit on no heads is a bit-exact no-op.

Tracing and steering compose in either nesting order. A trace's maps then come from the steered
run, and show the attention probabilities **before** the edit's rescaling (the trace reads q and k,
which the edit does not change; the rescaled columns are not renormalised probabilities).

Example:
    >>> import attnscope                                                       # doctest: +SKIP
    >>> with attnscope.steer(pipe, attnscope.weaken(heads=[0, 5], factor=-2.0)):  # doctest: +SKIP
    ...     image = pipe("a red circle", num_inference_steps=20).images[0]
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..core.layers import LayerInfo
from ..core.tokens import find_word, words_from_tokens
from .edits import Edit, TokenScale, in_window
from .hooks import CallState, LayerHooks, SDPACall


def layout_of(layers: Iterable[LayerInfo]) -> tuple:
    """``((layer name, heads), ...)``: what an edit's head indices refer to."""
    return tuple((layer.name, layer.heads) for layer in layers)


class Steering(LayerHooks):
    """The context manager returned by :func:`steer`."""

    def __init__(self, pipe: Any, edits: Iterable[Edit], *, cfg: bool | None = None, adapter: Any = None):
        super().__init__(pipe, self._handle, cfg=cfg, adapter=adapter)
        terms = [t for e in edits for t in _as_edit(e).terms]
        self.n_heads = sum(l.heads for l in self.layers)
        layout = layout_of(self.layers)
        for term in terms:
            if term.layout is not None and tuple(map(tuple, term.layout)) != layout:
                built = sum(h for _, h in term.layout)
                raise ValueError(f"An edit was made for a model with {built} heads in {len(term.layout)} layers; "
                                 f"this pipeline has {self.n_heads} heads in {len(layout)} layers: use head "
                                 "relevance built for this model.")
            bad = sorted(h for h in term.weights if not 0 <= h < self.n_heads)
            if bad:
                raise ValueError(f"Heads {bad[:5]} do not exist: this pipeline has {self.n_heads} heads "
                                 f"(global indices 0..{self.n_heads - 1}).")
        self.terms = [t for t in terms if t.weights]
        self._tokenizer = self.adapter.text_encoder()[1]

    # -- per call ----------------------------------------------------------------------------------
    def _handle(self, layer: LayerInfo, state: CallState, call: SDPACall) -> torch.Tensor | None:
        lo, hi = layer.head_offset, layer.head_offset + layer.heads
        active = [t for t in self.terms if in_window(t.steps, state.index, state.total)
                  and any(lo <= h < hi for h in t.weights)]
        if not active:
            return None
        keys = int(call.key.shape[-2])
        cache_key = (layer.name, keys, tuple(id(t) for t in active))
        if cache_key not in state.cache:
            state.cache[cache_key] = self._weight_grid(layer, state, active, keys)
        heads, grid = state.cache[cache_key]
        return _rescaled(call, state.conditional_rows(), heads, grid)

    def _weight_grid(self, layer: LayerInfo, state: CallState, terms: list[TokenScale], keys: int):
        """``(local heads, W)`` with ``W`` of shape ``(images, len(heads), keys)``."""
        lo = layer.head_offset
        heads = sorted({h - lo for t in terms for h in t.weights if 0 <= h - lo < layer.heads})
        grid = torch.ones(state.n_images, len(heads), keys, dtype=torch.float32)
        for term in terms:
            w = torch.tensor([term.weights.get(lo + h, 1.0) for h in heads], dtype=torch.float32)
            for image in range(state.n_images):
                positions = self._positions(term, state, state.prompt_of_image(image), keys)
                grid[image][:, positions] *= w[:, None]
        return heads, grid

    def _positions(self, term: TokenScale, state: CallState, prompt: int, keys: int) -> list[int]:
        if term.tokens is not None:
            bad = [t for t in term.tokens if not 0 <= t < keys]
            if bad:
                raise IndexError(f"Token positions {bad} do not exist; the prompt has {keys} token positions.")
            return list(term.tokens)
        if state.prompt_ids is None or self._tokenizer is None:
            raise RuntimeError("Steering a word needs the pipeline to encode the prompt itself (prompt_embeds "
                               "were passed); give token positions with tokens=[...] instead.")
        strings = self._tokenizer.convert_ids_to_tokens(state.prompt_ids[prompt].tolist())
        words = words_from_tokens(strings, set(getattr(self._tokenizer, "all_special_tokens", []) or []))
        chosen = words if term.word is None else find_word(words, term.word)
        return [p for w in chosen for p in w.tokens if p < keys]


def _rescaled(call: SDPACall, rows: slice, heads: list[int], grid: torch.Tensor) -> torch.Tensor:
    """The SDPA output with ``((W − 1) ⊙ A) V`` added to ``heads`` of the conditional ``rows``.

    Only the key columns some weight touches are needed: ``A[..., T] = exp(scores[..., T] − logsumexp)``.
    """
    out = call.original()
    if out.requires_grad:
        out = out.clone()
    index = torch.tensor(heads, device=out.device)
    excess = grid.to(out.device) - 1.0                                   # (images, heads, keys)
    columns = excess.ne(0).any(dim=1).any(dim=0).nonzero().flatten()
    scores = call.scores(rows, index, key_major=True)                   # (images, heads, keys, queries)
    probs = (scores.index_select(-2, columns) - scores.logsumexp(dim=-2, keepdim=True)).exp()
    probs = probs * excess.index_select(-1, columns).unsqueeze(-1)
    every_head = len(heads) == out.shape[1]
    value = call.value[rows] if every_head else call.value[rows].index_select(1, index)
    delta = torch.matmul(probs.transpose(-1, -2), value.index_select(-2, columns).float()).to(out.dtype)
    if every_head:
        out[rows] += delta
    else:
        out[rows, index] += delta
    return out


def _as_edit(edit) -> Edit:
    if isinstance(edit, Edit):
        return edit
    if isinstance(edit, TokenScale):
        return Edit((edit,))
    raise TypeError(f"{type(edit).__name__} is not an attention edit; build one with attnscope.weaken(...), "
                    "attnscope.control.scale(...) or attnscope.hrv.strengthen(...).")


def steer(pipe: Any, *edits: Edit, cfg: bool | None = None) -> Steering:
    """Apply ``edits`` to ``pipe``'s cross-attention while it runs inside a ``with`` block.

    Edits act on the conditional branch only and during their own step windows; several edits
    multiply. See the module docstring for the exact rule and how it composes with a trace.

    Args:
        pipe: a diffusers pipeline with a supported denoiser (UNet today).
        edits: from :func:`attnscope.weaken`, :func:`attnscope.control.scale`,
            :func:`attnscope.hrv.strengthen` or :func:`attnscope.hrv.adjust`.
        cfg: override the detection of a classifier-free-guidance batch.

    >>> with attnscope.steer(pipe, attnscope.hrv.strengthen(hrv, word="circle", concept="shape")):  # doctest: +SKIP
    ...     pipe("a red circle")
    """
    return Steering(pipe, edits, cfg=cfg)
