"""ConceptAttention's zero-shot segmentation protocol on real images (ImageNet-Segmentation, PascalVOC).

For each image: concepts = a fixed set of background words + the image's class name(s); caption
``"a <class>"`` (classes joined by commas); the image is resized to the model's size, noised and
denoised once per draw (:func:`attnscope.realimages.trace_images`); ConceptAttention's maps are
read on the chosen double-stream blocks; maps and ground truth go to ``eval_size`` (224², nearest,
as the reference experiments do).

- ``mode="single"`` (ImageNet-Segmentation; PascalVOC's single-class images): a pixel is
  foreground when the class concept wins the argmax over all concepts; the soft map is the class
  concept's map. Scores, pooled over the whole data set as in the reference code: pixel accuracy
  (correct / scored pixels), mIoU (the mean of background's and foreground's IoU, each from summed
  intersections and unions), mAP (the mean over images of the soft map's average precision).
- ``mode="multi"`` (PascalVOC): every pixel takes the winning concept's class (background words
  → background); pooled pixel accuracy and the mean over classes of each class's pooled IoU.

Pixels labelled :data:`~attnscope.datasets.segbench.IGNORE` are not scored.

Example:
    >>> voc = PascalVOC("data/VOCdevkit", single_class=True)                     # doctest: +SKIP
    >>> evaluate_concept_segmentation(pipe, voc, layers=[f"joint{i}.attn" for i in range(14, 19)])  # doctest: +SKIP
    {'pixel_acc': ..., 'mIoU': ..., 'mAP': ..., 'images': ...}
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.segbench import IGNORE, SegSample
from . import metrics

#: The background words of the reference experiments.
BACKGROUND_CONCEPTS = ("background", "floor", "grass", "tree", "sky")
#: Side of the square the maps and masks are scored at (the paper's 224 × 224).
EVAL_SIZE = 224
MODES = ("single", "multi")


def concept_maps(pipe, sample: SegSample, *, size: tuple[int, int], background: Sequence[str] = BACKGROUND_CONCEPTS,
                 layers=None, space: str = "output", noise: float = 0.5, draws: int = 1, seed: int = 0,
                 eval_size: int = EVAL_SIZE) -> tuple[list[str], torch.Tensor]:
    """``(concepts, maps (concepts, eval_size, eval_size))`` of one sample: background words, then its classes."""
    from PIL import Image

    from ..realimages import trace_images

    if not sample.classes:
        raise ValueError(f"Sample {sample.name} has no class name; give ImageNetSegmentation its labels.")
    classes = [c for c in sample.classes if c not in background]
    concepts = list(background) + classes
    image = Image.fromarray(sample.image).resize((size[1], size[0]), Image.BICUBIC)
    caption = ", ".join(f"a {c}" for c in sample.classes)
    tc = trace_images(pipe, [image], caption, concepts=concepts, layers=[], noise=noise, draws=draws, seed=seed)
    maps = tc.concept_attention(space=space, layers=layers).saliency[0]
    return concepts, F.interpolate(maps[None].float(), size=(eval_size, eval_size), mode="nearest")[0]


def _resize_mask(mask: np.ndarray, eval_size: int) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=(eval_size, eval_size), mode="nearest")[0, 0].long().numpy()


def evaluate_concept_segmentation(pipe, dataset: Sequence[SegSample], *, mode: str = "single", size=None,
                                  background: Sequence[str] = BACKGROUND_CONCEPTS, layers=None, space: str = "output",
                                  noise: float = 0.5, draws: int = 1, seed: int = 0, eval_size: int = EVAL_SIZE,
                                  progress: Callable | None = None) -> dict:
    """Score ConceptAttention on ``dataset`` under the paper's protocol (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {MODES}.")
    if size is None:
        side = int(getattr(pipe, "default_sample_size", 64) or 64) * int(getattr(pipe, "vae_scale_factor", 8) or 8)
        size = (side, side)
    correct = labelled = 0
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    aps = []
    for n, sample in enumerate(dataset):
        if mode == "single" and len(sample.classes) != 1:
            raise ValueError(f"mode='single' needs one class per image; {sample.name} has {sample.classes}.")
        concepts, maps = concept_maps(pipe, sample, size=size, background=background, layers=layers, space=space,
                                      noise=noise, draws=draws, seed=seed + n, eval_size=eval_size)
        gt = _resize_mask(sample.mask, eval_size)
        valid = gt != IGNORE
        winner = maps.argmax(0).numpy()
        named = dict(zip(sample.classes, sample.indices))
        index_of = {len(background) + i: named[c] for i, c in enumerate(concepts[len(background):])}
        if mode == "single":
            fg = len(concepts) - 1
            pred, truth = (winner == fg).astype(np.int64), (gt == sample.indices[0]).astype(np.int64)
            ap = metrics.average_precision(maps[fg].numpy()[valid], truth[valid].astype(bool))
            if not np.isnan(ap):
                aps.append(ap)
        else:
            pred = np.vectorize(lambda c: index_of.get(int(c), 0))(winner)
            truth = gt
        correct += int((pred == truth)[valid].sum())
        labelled += int(valid.sum())
        for c in np.unique(np.r_[pred[valid], truth[valid]]):
            p, t = (pred == c) & valid, (truth == c) & valid
            inter[int(c)] = inter.get(int(c), 0) + int((p & t).sum())
            union[int(c)] = union.get(int(c), 0) + int((p | t).sum())
        if progress:
            progress(n + 1, len(dataset))
    if not labelled:
        raise ValueError("The data set has no scored pixel.")
    out = {"mode": mode, "images": len(dataset), "pixel_acc": correct / labelled,
           "mIoU": float(np.mean([inter[c] / union[c] for c in union if union[c]])),
           "settings": {"size": list(size), "background": list(background), "layers": layers, "space": space,
                        "noise": noise, "draws": draws, "seed": seed, "eval_size": eval_size}}
    if mode == "single":
        out["mAP"] = float(np.mean(aps)) if aps else float("nan")
    return out
