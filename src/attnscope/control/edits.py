"""Attention edits: rescale chosen prompt tokens' attention in chosen heads, composable with ``+``.

An :class:`Edit` is a list of :class:`TokenScale` terms. Each term multiplies the attention
probabilities of some prompt tokens (a word's tokens, given positions, or every prompt-word token)
by a weight per head — ``A'_h[:, T] = w_h · A_h[:, T]``, no renormalisation, conditional branch
only — during a window of denoising calls. Heads are global head indices (see
:mod:`attnscope.core.layers`); heads a term does not name keep weight 1. Terms compose by
multiplying their weights. Apply edits with :func:`attnscope.steer`.

Example:
    >>> edit = weaken(heads=[0, 3], factor=-2.0) + scale({5: 1.5}, word="circle", steps=(0.0, 0.8))
    >>> len(edit.terms), edit.terms[0].weights
    (2, {0: -2.0, 3: -2.0})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

#: The factor of the HRV paper's ordered weakening analysis (attention of prompt words × −2).
WEAKEN_FACTOR = -2.0


@dataclass(frozen=True)
class TokenScale:
    """One term of an edit.

    Attributes:
        weights: ``{global head: weight}``; heads not listed keep weight 1.
        word: a word or phrase of the prompt whose tokens are scaled (every occurrence).
        tokens: token positions to scale instead of a word.
        steps: the window of denoising calls (see :func:`in_window`); None for every call.
        layout: ``((layer name, heads), ...)`` of the model the weights were made for, or None.
    """

    weights: Mapping[int, float]
    word: str | None = None
    tokens: tuple[int, ...] | None = None
    steps: object = None
    layout: tuple | None = None


@dataclass(frozen=True)
class Edit:
    """A composable attention edit (``edit_a + edit_b``); see the module docstring."""

    terms: tuple[TokenScale, ...] = ()

    def __add__(self, other: "Edit") -> "Edit":
        if not isinstance(other, Edit):
            return NotImplemented
        return Edit(self.terms + other.terms)

    def heads(self) -> set[int]:
        """Global heads whose weight differs from 1 in some term."""
        return {h for t in self.terms for h, w in t.weights.items() if w != 1.0}


def _weights(weights) -> dict[int, float]:
    if isinstance(weights, Mapping):
        items = weights.items()
    else:
        values = torch.as_tensor(weights, dtype=torch.float64).flatten().tolist()
        items = enumerate(values)
    return {int(h): float(w) for h, w in items if float(w) != 1.0}


def scale(weights, *, word: str | None = None, tokens: Iterable[int] | None = None, steps=None,
          layout: tuple | None = None) -> Edit:
    """Multiply a word's (or ``tokens``', or every prompt word's) attention in each head by its weight.

    ``weights`` is a per-head vector over all the model's heads or ``{global head: weight}``.

        >>> scale([1.0, 2.0, 1.0], word="red").terms[0].weights
        {1: 2.0}
    """
    if word is not None and tokens is not None:
        raise ValueError("Give either word= or tokens=, not both.")
    if word is not None and not str(word).strip():
        raise ValueError("word= is empty; give a word of the prompt.")
    positions = None if tokens is None else tuple(int(t) for t in tokens)
    in_window(steps, 0, 1)  # validates the window's form
    return Edit((TokenScale(_weights(weights), word=word, tokens=positions, steps=steps, layout=layout),))


def weaken(heads: Iterable[int], factor: float = WEAKEN_FACTOR, *, word: str | None = None,
           tokens: Iterable[int] | None = None, steps=None) -> Edit:
    """Multiply the attention of every prompt-word token (or one word's) in ``heads`` by ``factor``.

    The default factor −2 is the HRV paper's ordered weakening; ``heads=[]`` is an exact no-op.

        >>> weaken(heads=[2, 7]).terms[0].weights
        {2: -2.0, 7: -2.0}
    """
    heads = [int(h) for h in heads]
    bad = [h for h in heads if h < 0]
    if bad:
        raise ValueError(f"Head indices {bad} are negative; heads are global indices 0..(model heads - 1).")
    return scale({h: factor for h in heads}, word=word, tokens=tokens, steps=steps)


def in_window(steps, index: int, total: int | None) -> bool:
    """Whether denoising call ``index`` (0-based) of ``total`` lies in the window ``steps``.

    ``steps`` is None (every call), a ``range`` or ``slice`` of call indices, an ``(start, stop)``
    pair of ints (calls ``start..stop-1``) or of floats in [0, 1] (a fraction of the run: ``(0, 0.8)``
    is the first 80 % of the calls).

        >>> [in_window((0.0, 0.5), i, 4) for i in range(4)]
        [True, True, False, False]
    """
    if steps is None:
        return True
    if isinstance(steps, slice):
        steps = range(steps.start or 0, steps.stop if steps.stop is not None else 1 << 30, steps.step or 1)
    if isinstance(steps, range):
        return index in steps
    if isinstance(steps, Sequence) and len(steps) == 2 and not isinstance(steps, str):
        start, stop = steps
        if isinstance(start, float) or isinstance(stop, float):
            if not 0.0 <= start <= stop <= 1.0:
                raise ValueError(f"steps={steps!r}: fractions of the run need 0 <= start <= stop <= 1.")
            if total is None:
                raise ValueError("A fractional step window needs the scheduler's number of steps; "
                                 "give steps as call indices instead.")
            return start * total <= index < stop * total
        return int(start) <= index < int(stop)
    raise ValueError(f"steps={steps!r} is not understood; pass a range, a slice, (start, stop) call "
                     "indices or (start, stop) fractions such as (0.0, 0.8).")
