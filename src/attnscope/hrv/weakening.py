"""Ordered weakening analysis: does a concept survive when its most relevant heads are weakened?

For k = 0, 1, 11, 21, …, H, the top-k heads of a concept by HRV (MoRHF: most relevant first) or
its bottom-k (LeRHF) are weakened — every prompt-word token's attention × −2, conditional branch,
all steps (:func:`attnscope.weaken`) — and a scorer measures how much of the concept remains in
each image. If the HRV means something, MoRHF destroys the concept much faster than LeRHF.

Scorers take ``(images, targets)`` and return one score per image: :class:`ShapesScorer` asks the
ShapesWorld detector whether each captioned object's colour (or shape) is still there;
:class:`CLIPScorer` is the paper's CLIP similarity between the image and the concept word.

Example:
    >>> from attnscope.datasets.shapes import make_scenes                     # doctest: +SKIP
    >>> scenes = make_scenes(0, 20, split="test")                             # doctest: +SKIP
    >>> result = ordered_weakening(pipe, hrv, "colour", [(s.caption, s) for s in scenes],
    ...                            ShapesScorer("colour"), num_inference_steps=20)   # doctest: +SKIP
    >>> print(result.table()); result.plot().save("colour.png")               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..control.edits import WEAKEN_FACTOR, weaken
from ..control.steer import steer
from .vectors import HeadRelevance

#: The paper's k grid: 0, 1, then every ``K_STEP`` heads, then all heads.
K_STEP = 10
ORDERS = ("MoRHF", "LeRHF")


def weakening_ks(n_heads: int, step: int = K_STEP) -> list[int]:
    """``[0, 1, 1 + step, 1 + 2·step, …, n_heads]``.

    >>> weakening_ks(25)
    [0, 1, 11, 21, 25]
    """
    return sorted({0, min(1, n_heads), *range(1, n_heads + 1, step), n_heads})


class ShapesScorer:
    """Share of a ShapesWorld scene's objects whose ``concept`` (``"colour"`` or ``"shape"``) the
    detector still finds in the image (each detection matched once)."""

    CONCEPTS = ("colour", "shape")

    def __init__(self, concept: str):
        if concept not in self.CONCEPTS:
            raise ValueError(f"ShapesScorer scores {self.CONCEPTS}, not {concept!r}.")
        self.concept = concept

    def __call__(self, images: Sequence[np.ndarray], scenes: Sequence[Any]) -> list[float]:
        from ..datasets.detect import detect

        attribute = "color" if self.concept == "colour" else "shape"
        scores = []
        for image, scene in zip(images, scenes):
            found = [getattr(d, attribute) for d in detect(image)]
            kept = 0
            for obj in scene.objects:
                if getattr(obj, attribute) in found:
                    found.remove(getattr(obj, attribute))
                    kept += 1
            scores.append(kept / max(1, len(scene.objects)))
        return scores


class CLIPScorer:
    """Cosine similarity of CLIP's image and text embeddings between each image and its target word.

    Needs CLIP weights (``model_id`` from the hub cache or a folder); pass ``model``/``processor`` to
    use loaded ones.
    """

    def __init__(self, model_id: str = "openai/clip-vit-large-patch14", *, model=None, processor=None,
                 device: str = "cpu"):
        if model is None or processor is None:
            from transformers import CLIPModel, CLIPProcessor

            model, processor = CLIPModel.from_pretrained(model_id), CLIPProcessor.from_pretrained(model_id)
        self.model, self.processor, self.device = model.to(device).eval(), processor, device

    def __call__(self, images: Sequence[np.ndarray], words: Sequence[str]) -> list[float]:
        inputs = self.processor(text=list(words), images=[np.asarray(i) for i in images], return_tensors="pt",
                                padding=True).to(self.device)
        with torch.no_grad():
            image = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            text = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image, text = (getattr(x, "pooler_output", x) for x in (image, text))
        sims = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        return sims.tolist()


@dataclass
class WeakeningResult:
    """Mean score per k for each order, with every image's score."""

    concept: str
    ks: list[int]
    scores: dict[str, list[list[float]]]
    meta: dict = field(default_factory=dict)

    def mean(self, order: str) -> list[float]:
        return [float(np.mean(s)) for s in self.scores[order]]

    def table(self) -> str:
        """A markdown table: k, then the mean score under MoRHF and LeRHF."""
        lines = [f"| k | MoRHF ({self.concept}) | LeRHF ({self.concept}) |", "|---:|---:|---:|"]
        for k, more, less in zip(self.ks, self.mean("MoRHF"), self.mean("LeRHF")):
            lines.append(f"| {k} | {more:.3f} | {less:.3f} |")
        return "\n".join(lines)

    def plot(self):
        """The two curves as a PIL image."""
        from ..viz.figures import line_chart

        return line_chart({order: (self.ks, self.mean(order)) for order in ORDERS}, x_label="weakened heads k",
                          y_label="score", title=f"ordered weakening: {self.concept}")

    def to_dict(self) -> dict:
        return {"concept": self.concept, "ks": self.ks, "scores": self.scores,
                "mean": {o: self.mean(o) for o in ORDERS}, "meta": self.meta}


def ordered_weakening(pipe: Any, hrv: HeadRelevance, concept: str, cases: Sequence[tuple[str, Any]],
                      scorer: Callable, *, ks: Sequence[int] | None = None, factor: float = WEAKEN_FACTOR,
                      seed: int = 0, batch: int = 8, progress: Callable | None = None, **pipe_kwargs) -> WeakeningResult:
    """Weaken the top-k / bottom-k heads of ``concept`` and score every case's image.

    Args:
        cases: ``(prompt, target)`` pairs; the scorer gets the targets (a Scene, a word …).
        scorer: ``scorer(images, targets) -> scores`` (higher: more of the concept present).
        ks: head counts to weaken (default :func:`weakening_ks`).
        seed: case ``i`` uses noise seed ``seed + i`` under every setting.
        pipe_kwargs: passed to the pipeline (``num_inference_steps`` …).
    """
    row = hrv.weights(concept)
    ks = weakening_ks(hrv.n_heads) if ks is None else [int(k) for k in ks]
    cases = list(cases)
    if not cases:
        raise ValueError("cases= is empty; give (prompt, target) pairs to generate and score.")
    pipe_kwargs["output_type"] = "np"
    scores: dict[str, list[list[float]]] = {order: [] for order in ORDERS}
    for step, k in enumerate(ks):
        for order in ORDERS:
            if order == "LeRHF" and k in (0, hrv.n_heads):  # the same heads as MoRHF
                scores[order].append(list(scores["MoRHF"][-1]))
                continue
            heads = (hrv.top_heads if order == "MoRHF" else hrv.bottom_heads)(concept, k)
            scores[order].append(_score(pipe, cases, heads, factor, scorer, seed, batch, pipe_kwargs))
        if progress is not None:
            progress(step + 1, len(ks))
    meta = {"factor": factor, "seed": seed, "n_cases": len(cases), "hrv_row_max": float(row.max())}
    return WeakeningResult(concept=concept, ks=ks, scores=scores, meta=meta)


def _score(pipe, cases, heads, factor, scorer, seed, batch, pipe_kwargs) -> list[float]:
    out = []
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        with steer(pipe, weaken(heads, factor)):
            images = pipe([p for p, _ in chunk], generator=generators, **pipe_kwargs).images
        arrays = [(np.asarray(i) * 255).round().astype(np.uint8) for i in images]
        out += [float(s) for s in scorer(arrays, [t for _, t in chunk])]
    return out
