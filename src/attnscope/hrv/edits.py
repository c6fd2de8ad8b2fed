"""Concept strengthening and adjusting: attention edits weighted by head relevance (methods.md §2).

``strengthen``: a word's attention column in head h is scaled by ``w_h = HRV_c[h]``.
``adjust``: by ``w_h = 2·HRV_{c+}[h] − 1·HRV_{c−}[h]`` (may go negative), to pull a word toward the
wanted concept and away from the unwanted one ("a vase in lavender colour": colour, not plant).
Both use :meth:`HeadRelevance.weights` (clamped when the HRV has a clamp) and act on the
conditional branch only, with no renormalisation; apply them with :func:`attnscope.steer`.

Example:
    >>> edit = strengthen(hrv, word="circle", concept="shape", steps=(0.0, 0.8))     # doctest: +SKIP
    >>> with attnscope.steer(pipe, edit):                                           # doctest: +SKIP
    ...     pipe("a red circle")
"""

from __future__ import annotations

from ..control.edits import Edit, scale
from .vectors import HeadRelevance

#: The HRV paper's concept-adjusting weights: ``w = PLUS · HRV_{c+} − MINUS · HRV_{c−}``.
ADJUST_PLUS, ADJUST_MINUS = 2.0, 1.0


def strengthen(hrv: HeadRelevance, word: str, concept: str | None = None, *, steps=None) -> Edit:
    """Scale ``word``'s attention in each head by its relevance to ``concept`` (default: the
    concept whose example words contain ``word``)."""
    concept = concept if concept is not None else hrv.concept_of(word)
    return scale(hrv.weights(concept), word=word, steps=steps, layout=hrv.layout())


def adjust(hrv: HeadRelevance, word: str, plus: str, minus: str, *, plus_weight: float = ADJUST_PLUS,
           minus_weight: float = ADJUST_MINUS, steps=None) -> Edit:
    """Scale ``word``'s attention by ``plus_weight·HRV_plus − minus_weight·HRV_minus`` per head."""
    weights = plus_weight * hrv.weights(plus) - minus_weight * hrv.weights(minus)
    return scale(weights, word=word, steps=steps, layout=hrv.layout())
