"""Segmentation benchmark on ShapesWorld (or any COCO-style folder in its format).

Two protocols, one scoring path:

- **generated**: generate an image from each held-out caption, find the ground truth of the
  *generated* image with the dataset's detector, score each caption word's map against it. The same
  pass measures the model's quality gate (every captioned object present, right colour and shape).
- **real**: take dataset images with their exact masks, encode them with the VAE, noise them to
  ``noise`` (fraction of the schedule), run one denoising pass on the caption and score the maps.

Scores are per (image, word) pair; see :func:`summarize` for every pooling. Baselines in every
table: the whole-image mask, a uniformly random map, and each method's best fixed threshold
(an oracle chosen on the same data — an upper bound, not a tuned result).

Example:
    >>> report = run_generated(pipe, scenes, ["daam"])     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..adapters import adapter_for
from ..core.trace import trace
from ..datasets.detect import detect, masks_for_words, match_objects
from ..methods import binarize, get_method
from ..methods.base import DEFAULT_THRESHOLD
from . import metrics
from .heads import head_names, score_heads

SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


@dataclass
class Pair:
    """One scored (image, word) pair."""

    image: int
    word: str
    kind: str
    gt: np.ndarray
    soft: dict = field(default_factory=dict)  # method name -> the method's un-normalised map (numpy)
    #: which of the caption's objects the word is about (0: the first named) and how many it names
    object_index: int = 0
    n_objects: int = 1
    #: IoU of each stored head's own map (``per_head=`` runs only; :mod:`attnscope.eval.heads`)
    heads: np.ndarray | None = None
    head_names: tuple = ()

    @property
    def caption_position(self) -> str | None:
        """``"first-named"`` / ``"last-named"`` for a word about the first / last of several objects."""
        if self.n_objects < 2 or 0 < self.object_index < self.n_objects - 1:
            return None
        return "first-named" if self.object_index == 0 else "last-named"


def _words_match(result, image: int, scene) -> list:
    """The prompt's words as the model saw them: the caption's words, possibly cut by the tokenizer's length."""
    words = result.word_tokens(image)
    if words and len(words) <= len(scene.words) and words[-1].text != scene.words[len(words) - 1]:
        words = words[:-1]  # the last word was cut in the middle of its tokens
    if [w.text for w in words] != scene.words[: len(words)]:
        raise ValueError(f"Tokenizer words {[w.text for w in words]} differ from the caption's {scene.words}.")
    return words


def collect_pairs(results: dict, scenes, gts, offset: int = 0, words_from=None, per_head: str | None = None) -> list[Pair]:
    """Score-ready pairs from ``{method name: result}`` of one traced batch of ``scenes``.

    Token-keyed methods are read at each word's token positions, concept-keyed ones by the word
    itself; ``words_from`` (a token-keyed result; default: the first of ``results``) says which
    caption words the model read. ``per_head`` names a result whose every head is also scored alone.
    """
    pairs = []
    reference = words_from if words_from is not None else next(iter(results.values()))
    by_concept = {name: get_method(name).keyed_by == "concepts" for name in results}
    names = tuple(head_names(results[per_head])) if per_head is not None else ()
    for i, (scene, gt) in enumerate(zip(scenes, gts)):
        words = _words_match(reference, i, scene)
        for index, mask in gt.items():
            if index >= len(words):  # cut off by the text encoder's context length: not scorable
                continue
            pair = Pair(offset + i, scene.words[index], scene.word_kinds[index], mask.astype(bool),
                        object_index=scene.word_objects.get(index, 0), n_objects=len(scene.objects))
            with torch.no_grad():
                for name, result in results.items():
                    key = scene.words[index] if by_concept[name] else list(words[index].tokens)
                    pair.soft[name] = result.raw_map(key, i).numpy()
            if per_head is not None:
                pair.heads = score_heads(results[per_head], i, words[index].tokens, pair.gt)
                pair.head_names = names
            pairs.append(pair)
    return pairs


def read_methods(tc, methods, generation: int = -1) -> tuple[dict, object]:
    """``({name: result}, a token-keyed result)`` of one traced generation."""
    results = {name: tc.run(name, generation) for name in methods}
    tokens = next((r for n, r in results.items() if get_method(n).keyed_by == "tokens"), None)
    return results, tokens if tokens is not None else tc.run("daam", generation)


def trace_options(methods, scenes) -> dict:
    """What the methods need the trace to do for these scenes (e.g. ConceptAttention's concepts:
    every scorable caption word of the batch)."""
    words = [scene.words[i] for scene in scenes for i, kind in scene.word_kinds.items() if kind != "position"]
    options: dict = {}
    for name in methods:
        options.update(get_method(name).trace_options(words))
    return options


def _per_head_method(methods, per_head: bool) -> str | None:
    if not per_head:
        return None
    if "daam" not in methods:
        raise ValueError("per_head=True scores DAAM's heads one by one; include 'daam' in the methods.")
    return "daam"


def run_generated(pipe, scenes, methods, steps=20, guidance=4.0, batch=25, seed=0, progress=None, per_head=False):
    """Generate from every scene's caption; returns (pairs, per-image records, images).

    With no ``methods`` nothing is traced: only the quality gate is measured (any pipeline works).
    ``per_head`` also scores each of DAAM's heads alone (``Pair.heads``).
    """
    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1.")
    head_method = _per_head_method(methods, per_head)
    pairs, records, images = [], [], []
    context = adapter_for(pipe).context_length() if methods else _context_length(pipe)
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        generators = [torch.Generator().manual_seed(seed + start + j) for j in range(len(chunk))]
        with trace(pipe, **trace_options(methods, chunk)) if methods else contextlib.nullcontext() as tc:
            out = pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators, output_type="np")
        arrays = [(img * 255).round().astype(np.uint8) for img in out.images]
        token_ids = pipe.tokenizer([s.caption for s in chunk]).input_ids
        gts = []
        for scene, image, ids in zip(chunk, arrays, token_ids):
            found = detect(image)
            hits = match_objects(found, scene.objects)
            missed = [o for o, hit in zip(scene.objects, hits) if hit is None]
            records.append({"caption": scene.caption, "n_objects": len(scene.objects),
                            "shapes": sorted({o.shape for o in scene.objects}),
                            "truncated": len(ids) > context,
                            "match": not missed,  # matches_caption, from the same hits
                            "colors_exact": sorted(d.color for d in found) == sorted(o.color for o in scene.objects),
                            "missing": [f"{o.color} {o.shape}" for o in missed],
                            "sizes": [o.size for o in scene.objects],
                            "missing_sizes": [o.size for o in missed],
                            "found": [f"{d.color} {d.shape}" for d in found]})
            gts.append(masks_for_words(found, scene))
        if methods:
            results, words_from = read_methods(tc, methods)
            pairs += collect_pairs(results, chunk, gts, offset=start, words_from=words_from, per_head=head_method)
        images += arrays
        if progress:
            progress(len(images), len(scenes))
    return pairs, records, images


def run_real(pipe, scenes, methods, noise=0.5, draws=1, batch=25, seed=0, progress=None, per_head=False):
    """One denoising pass per noise draw on noised dataset images (:func:`attnscope.realimages.trace_images`;
    the draws of a batch sum into one generation); ground truth is the dataset's exact masks."""
    from ..realimages import trace_images

    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1.")
    head_method = _per_head_method(methods, per_head)
    pairs, images = [], []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        tc = trace_images(pipe, np.stack([s.image for s in chunk]), [s.caption for s in chunk], noise=noise,
                          draws=draws, seed=seed * 7919 + start * 31, **trace_options(methods, chunk))
        results, words_from = read_methods(tc, methods)
        pairs += collect_pairs(results, chunk, [s.word_masks for s in chunk], offset=start, words_from=words_from,
                               per_head=head_method)
        images += [s.image for s in chunk]
        if progress:
            progress(len(images), len(scenes))
    return pairs, images


def _context_length(pipe) -> int:
    tokenizer = getattr(pipe, "tokenizer", None)
    return int(getattr(tokenizer, "model_max_length", 1 << 30))


def _scores(preds, pairs, softs=None) -> dict:
    gts = [p.gt for p in pairs]
    out = {
        "mIoU_per_pair": metrics.mean_iou(list(zip(preds, gts)), pooling="per_pair"),
        "mIoU_pooled": metrics.mean_iou(list(zip(preds, gts)), pooling="pooled"),
        "pixel_acc": float(np.mean([metrics.pixel_accuracy(p, g) for p, g in zip(preds, gts)])),
    }
    if softs is not None:
        out["mAP"] = metrics.mean_average_precision(list(zip(softs, gts)))
    return out


def summarize(pairs: list[Pair], methods, seed: int = 0) -> dict:
    """Scores of every method and baseline, overall, by word kind, and by word kind for the first-
    and the last-named object of captions that name several (``"shape, first-named object"``).

    ``mIoU_per_pair``: mean over (image, word) pairs of that pair's IoU; ``mIoU_pooled``: total
    intersection over total union; ``pixel_acc``: mean over pairs of the fraction of agreeing
    pixels; ``mAP``: mean over pairs of the soft map's average precision.
    """
    if not pairs:
        raise ValueError("No (image, word) pair had a ground-truth mask; nothing to score.")
    rng = np.random.default_rng(seed)
    kinds = sorted({p.kind for p in pairs})
    groups = {"all": pairs, **{k: [p for p in pairs if p.kind == k] for k in kinds}}
    for kind in kinds:  # the same kind of word about the first- and the last-named of several objects
        for position in ("first-named", "last-named"):
            members = [p for p in pairs if p.kind == kind and p.caption_position == position]
            if members:
                groups[f"{kind}, {position} object"] = members
    table: dict = {}
    for group, members in groups.items():
        rows = {}
        whole = [np.ones_like(p.gt) for p in members]
        rows["baseline: whole image"] = _scores(whole, members, [w.astype(float) for w in whole])
        random_maps = [rng.random(p.gt.shape) for p in members]
        rows["baseline: random map"] = _scores([m >= 0.5 for m in random_maps], members, random_maps)
        for name in methods:
            softs = [p.soft[name] for p in members]
            rows[name] = _scores([binarize(name, s) for s in softs], members, softs)
            if get_method(name).result_type.threshold_rule == "mean":  # map > its mean: no τ to sweep
                rows[name]["threshold"] = "mean"
                continue
            rows[name]["threshold"] = DEFAULT_THRESHOLD
            sweep = {t: metrics.mean_iou([(binarize(name, s, t), p.gt) for s, p in zip(softs, members)])
                     for t in SWEEP}
            best = max(sweep, key=sweep.get)
            rows[f"{name} @ best fixed τ (oracle)"] = {**_scores([binarize(name, s, best) for s in softs], members, softs),
                                                      "threshold": best}
        table[group] = {"pairs": len(members), "rows": rows}
    return table
