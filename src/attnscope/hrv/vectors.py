"""Head relevance vectors: one row per visual concept, one column per cross-attention head.

``matrix[c, h] = H · count[h, c] / Σ_h' count[h', c]`` (each row's mean is 1), where ``count`` holds
the votes of HRV construction (:func:`attnscope.hrv.build`). Columns follow the model's global head
order (:mod:`attnscope.core.layers`). The matrix is kept unclamped; :meth:`HeadRelevance.weights`
gives a row clamped at :attr:`HeadRelevance.clamp` (the paper clamps SDXL's at 9) for edits.

Example:
    >>> hrv = HeadRelevance.from_counts(torch.tensor([[3, 1], [0, 4]]), ["colour", "shape"],
    ...                                 [("l.attn2", 0), ("l.attn2", 1)])
    >>> hrv.matrix.tolist(), hrv.top_heads("colour", 1)
    ([[1.5, 0.5], [0.0, 2.0]], [0])
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

#: The clamp bound the HRV paper applies to SDXL's vectors before use.
PAPER_SDXL_CLAMP = 9.0
#: A model folder's HRV, found by :func:`relevance_for` (``<model folder>/hrv``).
MODEL_HRV_FOLDER = "hrv"


@dataclass
class HeadRelevance:
    """Head relevance vectors of one model (see the module docstring).

    Attributes:
        matrix: float32 ``(concepts, heads)``, each row's mean 1 (unclamped).
        concepts: concept names in row order.
        heads: ``(layer name, head within layer)`` per column, in the model's global head order.
        words: the example words of each concept (empty for published matrices without them).
        counts: int64 ``(concepts, heads)`` votes when built here, else None.
        clamp: upper bound applied by :meth:`weights`, or None.
        meta: model, settings, prompts done and version — enough to resume and reproduce.
    """

    kind: ClassVar[str] = "hrv"

    matrix: torch.Tensor
    concepts: list[str]
    heads: list[tuple[str, int]]
    words: dict[str, list[str]] = field(default_factory=dict)
    counts: torch.Tensor | None = None
    clamp: float | None = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_counts(cls, counts, concepts: Sequence[str], heads: Sequence[tuple[str, int]], **fields) -> "HeadRelevance":
        """Count normalisation of ``counts`` ``(concepts, heads)``; a concept without votes gets all ones."""
        counts = torch.as_tensor(counts, dtype=torch.int64)
        totals = counts.sum(dim=1, keepdim=True).double()
        n_heads = counts.shape[1]
        matrix = torch.where(totals > 0, n_heads * counts.double() / totals.clamp_min(1), torch.ones_like(totals))
        return cls(matrix=matrix.float(), concepts=list(concepts), heads=[(str(n), int(h)) for n, h in heads],
                   counts=counts, **fields)

    # -- lookup --------------------------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return int(self.matrix.shape[1])

    def index(self, concept: str) -> int:
        """Row of ``concept``; a KeyError names the valid concepts."""
        if concept not in self.concepts:
            raise KeyError(f"Unknown concept {concept!r}; this HRV has: {', '.join(self.concepts)}.")
        return self.concepts.index(concept)

    def row(self, concept: str) -> torch.Tensor:
        """The unclamped vector of ``concept`` (mean 1)."""
        return self.matrix[self.index(concept)]

    def weights(self, concept: str) -> torch.Tensor:
        """The vector of ``concept`` as edits use it: clamped at :attr:`clamp` when set."""
        row = self.row(concept)
        return row if self.clamp is None else row.clamp(max=self.clamp)

    def top_heads(self, concept: str, k: int) -> list[int]:
        """Global indices of the ``k`` heads most relevant to ``concept``, most relevant first."""
        return self._ranked(concept, k, descending=True)

    def bottom_heads(self, concept: str, k: int) -> list[int]:
        """Global indices of the ``k`` least relevant heads, least relevant first."""
        return self._ranked(concept, k, descending=False)

    def _ranked(self, concept: str, k: int, descending: bool) -> list[int]:
        if not 0 <= int(k) <= self.n_heads:
            raise ValueError(f"k={k} must lie in 0..{self.n_heads} (this model's heads).")
        order = torch.sort(self.row(concept), descending=descending, stable=True).indices
        return order[: int(k)].tolist()

    def concept_of(self, word: str) -> str:
        """The concept whose example words contain ``word`` (case-insensitive)."""
        hits = [c for c in self.concepts if word.casefold() in {w.casefold() for w in self.words.get(c, [])}]
        if not hits:
            raise KeyError(f"{word!r} is no example word of any concept; name its concept (one of: "
                           f"{', '.join(self.concepts)}).")
        return hits[0]

    def layout(self) -> tuple:
        """``((layer name, heads), ...)`` in column order: the model this HRV belongs to."""
        out: list[list] = []
        for name, _ in self.heads:
            if out and out[-1][0] == name:
                out[-1][1] += 1
            else:
                out.append([name, 1])
        return tuple((n, h) for n, h in out)

    def check_layers(self, layers) -> None:
        """Refuse a model whose cross-attention heads differ from this HRV's columns."""
        theirs = tuple((l.name, l.heads) for l in layers)
        if theirs != self.layout():
            n = sum(h for _, h in theirs)
            raise ValueError(f"This HRV has {self.n_heads} heads in {len(self.layout())} layers but the model has "
                             f"{n} heads in {len(theirs)} layers; build or load the HRV for this model.")

    def summary(self, k: int = 5, concepts: Sequence[str] | None = None) -> str:
        """A markdown table: each concept's ``k`` most relevant heads (``layer/head: value``) and words."""
        from ..core.layers import LayerInfo

        lines = [f"| concept | top {k} heads | example words |", "|---|---|---|"]
        for concept in self.concepts if concepts is None else concepts:
            row = self.row(concept)
            heads = ", ".join(f"{LayerInfo(self.heads[h][0], 0, 0).short_name}/{self.heads[h][1]}: {row[h]:.2f}"
                              for h in self.top_heads(concept, min(k, self.n_heads)))
            lines.append(f"| {concept} | {heads} | {', '.join(self.words.get(concept, []))} |")
        return "\n".join(lines)

    def rank_correlation(self, other: "HeadRelevance") -> dict[str, float]:
        """Spearman rank correlation of each shared concept's row with ``other``'s (same heads):
        how stable the head ranking is, e.g. between HRVs built from two disjoint prompt sets."""
        if self.layout() != other.layout():
            raise ValueError(f"The two HRVs cover different heads ({self.n_heads} against {other.n_heads}); "
                             "compare HRVs of the same model.")
        return {c: spearman(self.row(c), other.row(c)) for c in self.concepts if c in other.concepts}

    def plot(self, concepts: Sequence[str] | None = None):
        """A heat map (PIL image): one row per concept, one column per head, labelled by layer."""
        from ..core.layers import LayerInfo
        from ..viz.figures import matrix_image

        concepts = list(self.concepts if concepts is None else concepts)
        rows = torch.stack([self.row(c) for c in concepts])
        groups = [(LayerInfo(name, 0, 0).short_name, n) for name, n in self.layout()]
        return matrix_image(rows, concepts, groups, title="head relevance (row mean 1)")

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``path/attnscope.json`` + ``path/tensors.safetensors`` (atomic); ``attnscope.load`` reads it."""
        from ..io import save_result

        record, tensors = self.to_saved()
        return save_result(path, self.kind, record, tensors)

    def to_saved(self) -> tuple[dict, dict[str, torch.Tensor]]:
        tensors = {"matrix": self.matrix.float().contiguous()}
        if self.counts is not None:
            tensors["counts"] = self.counts.contiguous()
        record = {"concepts": self.concepts, "heads": [list(h) for h in self.heads], "words": self.words,
                  "clamp": self.clamp, "meta": self.meta}
        return record, tensors

    @classmethod
    def from_saved(cls, record: dict, tensors: dict[str, torch.Tensor]) -> "HeadRelevance":
        from ..io import ResultFileError

        try:
            return cls(matrix=tensors["matrix"], concepts=list(record["concepts"]),
                       heads=[(str(n), int(h)) for n, h in record["heads"]], words=dict(record["words"]),
                       counts=tensors.get("counts"), clamp=record.get("clamp"), meta=dict(record["meta"]))
        except (KeyError, TypeError) as err:
            raise ResultFileError(f"The saved HRV is incomplete (missing {err}); build it again.") from None


# -- the HRV a pipeline's selective-head methods use ---------------------------------------------------
_ATTACHED: "weakref.WeakKeyDictionary[Any, HeadRelevance]" = weakref.WeakKeyDictionary()


def spearman(a, b) -> float:
    """Spearman rank correlation of two vectors (tied values share their mean rank); 0 when one is constant.

        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0]))
        0.5
    """
    ra, rb = _ranks(torch.as_tensor(a).double().flatten()), _ranks(torch.as_tensor(b).double().flatten())
    if ra.numel() != rb.numel():
        raise ValueError(f"Vectors of {ra.numel()} and {rb.numel()} values cannot be rank-correlated.")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float((ra.square().sum() * rb.square().sum()).sqrt())
    return round(float((ra * rb).sum()) / denominator, 6) if denominator > 0 else 0.0


def _ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.sort(values, stable=True).indices
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():  # ties: the mean of their ranks
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def attach(pipe: Any, hrv: HeadRelevance | str | os.PathLike) -> HeadRelevance:
    """Make ``hrv`` (or a saved one's path) the HRV that methods such as ``selective`` use for ``pipe``.

        >>> attach(pipe, "runs/hrv-shapes"); tc.selective()         # doctest: +SKIP
    """
    if not isinstance(hrv, HeadRelevance):
        hrv = load_relevance(hrv)
    _ATTACHED[pipe] = hrv
    return hrv


def load_relevance(path: str | os.PathLike) -> HeadRelevance:
    """Read a saved HRV (kind ``hrv``) from ``path``."""
    from ..io import ResultFileError, read_result

    record, tensors = read_result(path)
    if record["kind"] != HeadRelevance.kind:
        raise ResultFileError(f"{path} holds a {record['kind']!r} result, not head relevance vectors.")
    return HeadRelevance.from_saved(record, tensors)


def relevance_for(pipe: Any) -> HeadRelevance:
    """The HRV attached to ``pipe``, else the one saved in its model folder (``<folder>/hrv``)."""
    try:
        if pipe in _ATTACHED:
            return _ATTACHED[pipe]
    except TypeError:  # an object that cannot be weakly referenced was never attached
        pass
    folder = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if folder and (Path(folder) / MODEL_HRV_FOLDER).is_dir():
        return load_relevance(Path(folder) / MODEL_HRV_FOLDER)
    raise LookupError("This pipeline has no head relevance vectors: build them (attnscope.hrv.build or "
                      "`attnscope hrv build`) and pass them with attnscope.hrv.attach(pipe, hrv).")
