"""Selective head aggregation: a word's map from the heads most (or least) relevant to its concept.

DAAM averages every head. Here each head's upsampled map gets a weight: 1 for the top-k heads of
the word's concept by head relevance (``mode="top"``), 1 for the bottom-k (``"bottom"``), or its
HRV value (``"weighted"``); the map is the weighted mean. With every weight 1 this is DAAM. ``k``
defaults to :data:`DEFAULT_FRACTION` of the model's heads. The word's concept is looked up in the
HRV's example words, or given. Registered as the methods ``selective``, ``selective-bottom`` and
``hrv-weighted``, so ``attnscope eval --methods selective`` runs it with the HRV attached to the
pipeline (:func:`attnscope.hrv.attach`) or saved in the model folder.

Example:
    >>> attnscope.hrv.attach(pipe, hrv)                                   # doctest: +SKIP
    >>> with attnscope.trace(pipe) as tc:                                 # doctest: +SKIP
    ...     pipe("a red circle left of a blue square")
    >>> tc.selective().word("circle")                                     # doctest: +SKIP
    >>> diagnose(tc.selective(), "circle").save("circle.png")             # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..core.tokens import find_word
from ..hrv.vectors import HeadRelevance, load_relevance, relevance_for
from .base import MapResult, Method, threshold_map, token_positions
from .daam import DAAMResult

#: Share of the model's heads kept by default (the selective-aggregation paper reports 20–25 %).
DEFAULT_FRACTION = 0.25
MODES = ("top", "bottom", "weighted")


@dataclass
class SelectiveResult(DAAMResult):
    """DAAM's stored maps read through head relevance (see the module docstring).

    Attributes (besides :class:`DAAMResult`'s):
        relevance: the HRV whose rows rank the heads.
        mode, fraction, k: the default head selection of :meth:`raw_map`.
        word_concepts: ``{word: concept}`` for words not among the HRV's example words.
    """

    kind: ClassVar[str] = "selective"

    relevance: HeadRelevance | None = None
    mode: str = "top"
    fraction: float = DEFAULT_FRACTION
    k: int | None = None
    word_concepts: dict = field(default_factory=dict)

    def concept_for(self, word: str) -> str:
        known = {w.casefold(): c for w, c in self.word_concepts.items()}
        return known.get(word.casefold()) or self.relevance.concept_of(word)

    def n_selected(self, k: int | None = None) -> int:
        k = k if k is not None else self.k
        return int(k) if k is not None else max(1, round(self.fraction * self.relevance.n_heads))

    def head_weights(self, concept: str, mode: str | None = None, k: int | None = None) -> torch.Tensor:
        """Weight per global head for ``concept`` under ``mode`` (see the module docstring)."""
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}.")
        if mode == "weighted":
            return self.relevance.weights(concept).float()
        chosen = (self.relevance.top_heads if mode == "top" else self.relevance.bottom_heads)(concept, self.n_selected(k))
        weights = torch.zeros(self.relevance.n_heads)
        weights[chosen] = 1.0
        return weights

    def raw_map(self, key, image: int = 0, *, occurrence: int | None = None, concept: str | None = None,
                mode: str | None = None, k: int | None = None, heads: Iterable[int] | None = None, **options):
        """Un-normalised map of a word (or token positions) from the heads its concept selects.

        ``heads=`` overrides the selection with plain DAAM over those global heads.
        """
        if heads is not None:
            return super().raw_map(key, image, occurrence=occurrence, heads=heads, **options)
        positions, text = self._resolve(key, image, occurrence)
        concept = concept if concept is not None else self.concept_for(text)
        return self.weighted_map(positions, image, self.head_weights(concept, mode, k), **options)

    def _resolve(self, key, image: int, occurrence) -> tuple[list[int], str]:
        if isinstance(key, str):
            return token_positions(find_word(self._words(image), key, occurrence)), key
        positions = [int(p) for p in key]
        text = " ".join(w.text for w in self._words(image) if set(w.tokens) <= set(positions))
        if not text:
            raise KeyError(f"Token positions {positions} cover no word of the prompt; pass concept=.")
        return positions, text

    def weighted_map(self, positions: Sequence[int], image: int, weights: torch.Tensor, *,
                     layers=None, factors=None, step: int | None = None) -> torch.Tensor:
        """``Σ_h w_h · up(A_h[T]) / Σ_h w_h`` at image size (``up``: bicubic to the latent, clamped at 0)."""
        image = self.check_image(image)
        total, weight_sum = None, 0.0
        for layer, local in self._selection(layers, None, factors):
            stored = self.head_index[layer.name]
            w = weights[[layer.head_offset + stored[i] for i in local]]
            keep = [i for i, x in zip(local, w.tolist()) if x != 0.0]
            if not keep:
                continue
            w = w[w != 0]
            source = self.maps[layer.name] if step is None else self._step_maps(layer.name, step)
            block = source[image][keep][:, list(positions)].float()
            up = F.interpolate(block, size=self.latent_hw, mode="bicubic", align_corners=False).clamp_(min=0)
            part = (up * w[:, None, None, None]).sum(0)
            total = part if total is None else total + part
            weight_sum += float(w.sum())
        if total is None or weight_sum == 0.0:
            raise ValueError("No stored head has a non-zero weight for this selection; raise k or check the HRV.")
        latent_map = (total / weight_sum).mean(0)
        return F.interpolate(latent_map[None, None], size=self.image_hw, mode="bicubic", align_corners=False)[0, 0]

    # -- files -----------------------------------------------------------------------------------------
    def to_saved(self):
        record, tensors = super().to_saved()
        hrv_record, hrv_tensors = self.relevance.to_saved()
        tensors.update({f"hrv/{k}": v for k, v in hrv_tensors.items()})
        record["selective"] = {"mode": self.mode, "fraction": self.fraction, "k": self.k,
                               "word_concepts": self.word_concepts, "hrv": hrv_record}
        return record, tensors

    @classmethod
    def from_saved(cls, record: dict, tensors: dict) -> "SelectiveResult":
        result = super().from_saved(record, tensors)
        settings = record.get("selective", {})
        result.relevance = HeadRelevance.from_saved(settings.get("hrv", {}),
                                                    {k[4:]: v for k, v in tensors.items() if k.startswith("hrv/")})
        result.mode, result.fraction, result.k = settings["mode"], settings["fraction"], settings["k"]
        result.word_concepts = dict(settings.get("word_concepts", {}))
        return result


class SelectiveHeads(Method):
    """Selective head aggregation as a method: ``SelectiveHeads(hrv, k=16)(tc)``.

    Args:
        hrv: a :class:`HeadRelevance` or a saved one's path; default: the pipeline's
            (:func:`attnscope.hrv.attach`, else ``<model folder>/hrv``).
        k: heads kept per word (default ``fraction`` of the model's heads).
        concepts: ``{word: concept}`` for words the HRV's example words do not contain.

    >>> SelectiveHeads().name, HRVWeighted().mode
    ('selective', 'weighted')
    """

    name: ClassVar[str] = "selective"
    result_type: ClassVar[type[MapResult]] = SelectiveResult
    mode: ClassVar[str] = "top"

    def __init__(self, hrv: HeadRelevance | str | None = None, *, k: int | None = None,
                 fraction: float = DEFAULT_FRACTION, concepts: dict | None = None):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must lie in (0, 1].")
        self.hrv, self.k, self.fraction, self.concepts = hrv, k, fraction, dict(concepts or {})

    def __call__(self, trace: Any, generation: int = -1, **meta) -> SelectiveResult:
        hrv = self.hrv
        relevance = hrv if isinstance(hrv, HeadRelevance) else (load_relevance(hrv) if hrv else relevance_for(trace.pipe))
        relevance.check_layers(trace.model_layers)
        result = SelectiveResult.from_generation(trace.generation(generation), trace, meta)
        result.relevance, result.mode, result.fraction, result.k = relevance, self.mode, self.fraction, self.k
        result.word_concepts = dict(self.concepts)
        result.meta["method"] = self.name
        return result


class SelectiveBottom(SelectiveHeads):
    """The bottom-k heads: the control that shows what the least relevant heads see."""

    name: ClassVar[str] = "selective-bottom"
    mode: ClassVar[str] = "bottom"


class HRVWeighted(SelectiveHeads):
    """Every head, weighted by its relevance to the word's concept."""

    name: ClassVar[str] = "hrv-weighted"
    mode: ClassVar[str] = "weighted"


def k_sweep(result: SelectiveResult, items: Iterable[tuple], ks: Sequence[int], *,
            threshold: float | None = None) -> list[dict]:
    """mIoU of top-k and bottom-k maps against ground truth, for each k.

    ``items`` are ``(image, word or token positions, ground-truth mask at image size)``; masks use
    the DAAM threshold rule. Returns one row per k: ``{"k", "top", "bottom", "pairs"}``.

        >>> k_sweep(tc.selective(), [(0, "circle", gt)], ks=[4, 16, 64])   # doctest: +SKIP
    """
    from ..eval.metrics import mean_iou

    items = list(items)
    rows = []
    for k in ks:
        row = {"k": int(k), "pairs": len(items)}
        for mode in ("top", "bottom"):
            pairs = [(threshold_map(result.raw_map(key, image, mode=mode, k=k), result.threshold_rule, threshold).numpy(),
                      gt) for image, key, gt in items]
            row[mode] = mean_iou(pairs)
        rows.append(row)
    return rows


def diagnose(result: SelectiveResult, word: str, image: int = 0, *, k: int | None = None,
             concept: str | None = None):
    """A PIL figure: the image, then ``word``'s map from its most and from its least relevant heads.

    Comparing the two exposes misinterpretations: a polysemous word whose wrong-concept heads light up.
    """
    from ..viz.figures import side_by_side

    concept = concept if concept is not None else result.concept_for(word)
    n = result.n_selected(k)
    panels = []
    for mode in ("top", "bottom"):
        soft = result.soft(word, image, mode=mode, k=n, concept=concept)
        panels.append((soft, f"{word}: {mode} {n} {concept} heads"))
    base = None if result.images is None else result.images[result.check_image(image)].numpy()
    return side_by_side(base, panels)
