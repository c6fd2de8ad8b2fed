"""Head relevance vectors (HRV, Park et al., ICLR 2025): which cross-attention heads serve which concept.

Example:
    >>> import attnscope                                                                       # doctest: +SKIP
    >>> hrv = attnscope.hrv.build(pipe, concepts={"colour": ["red", "blue"], "shape": ["circle", "square"]},
    ...                           prompts=["a red circle", "a blue square"])                   # doctest: +SKIP
    >>> hrv.top_heads("shape", 5); hrv.save("runs/hrv"); attnscope.load("runs/hrv")             # doctest: +SKIP
    >>> with attnscope.steer(pipe, attnscope.hrv.strengthen(hrv, word="circle", concept="shape")):  # doctest: +SKIP
    ...     pipe("a red circle")

Names are imported on first use (torch and diffusers are heavy); see ``docs/hrv.md``.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "HeadRelevance": "vectors", "attach": "vectors", "load": "vectors", "relevance_for": "vectors",
    "PAPER_SDXL_CLAMP": "vectors",
    "build": "construct", "merge": "construct",
    "DEFAULT_CONCEPTS": "concepts", "shapes_concepts": "concepts",
    "load_published": "published",
    "strengthen": "edits", "adjust": "edits",
    "ordered_weakening": "weakening", "WeakeningResult": "weakening", "ShapesScorer": "weakening",
    "CLIPScorer": "weakening",
    "correct_polysemy": "applications", "word_swap": "applications",
    "attend_and_excite": "excite",
}
_RENAMED = {"load": "load_relevance"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'attnscope.hrv' has no attribute {name!r}")
    module = importlib.import_module(f".{_NAMES[name]}", __name__)
    return getattr(module, _RENAMED.get(name, name))
