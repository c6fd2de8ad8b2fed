"""Head-level measurements of head relevance on the shipped ShapesWorld UNet, in one command.

    python benchmarks/hrv_heads.py --out docs/results/hrv-heads
    python benchmarks/hrv_heads.py --out /tmp/hrv-heads --prompts 8 --scenes 4 --sink-scenes 2 --gate 4 --steps 2  # smoke

1. Stability: HRVs from two disjoint halves of ``--prompts`` training captions (shards 0/2 and 1/2),
   Spearman rank correlation of each concept's row; their merge (= the HRV of all the captions)
   drawn as a heads × concepts heat map.
2. Real protocol (``--scenes`` test images noised to 0.5, as ``attnscope eval --protocol real``):
   DAAM, top-k, bottom-k and HRV-weighted maps, the k sweep, and every head's own map scored alone
   (per-head IoU by word kind). Are the HRV's top heads the heads that localise best? Rank
   correlation of a concept's HRV row with its words' per-head IoU, and the overlap of the two top-k.
3. Where attention goes (generated protocol, ``--sink-scenes`` captions, every step and the padding
   kept): the share of an object's pixels' attention on the start token, the object's own words, the
   other objects' words, the remaining words, the end token and the padding, per layer and per step.
4. Strengthening against the quality gate (``--gate`` test captions, one image each, the same seed
   in every arm): plain, the colour words strengthened by the colour HRV, the shape words by the
   shape HRV; exact McNemar against plain.

Writes ``results.md``, ``results.json`` and ``hrv.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import operator
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import attnscope
from attnscope.core.layers import LayerInfo
from attnscope.datasets.detect import detect, masks_for_words, match_objects
from attnscope.datasets.shapes import make_scenes
from attnscope.eval.compare import mcnemar_exact
from attnscope.eval.report import markdown_table
from attnscope.eval.runner import collect_pairs, summarize
from attnscope.hrv.vectors import spearman
from attnscope.methods.selective import k_sweep
from attnscope.realimages import trace_images
from hrv_shapes import SWEEP_FRACTIONS, pooled_sweep, start_run  # benchmarks/ is the script's folder
from reporting import markdown_rows  # benchmarks/ is the script's folder

METHODS = ("daam", "selective", "selective-bottom", "hrv-weighted")
#: Word kinds of the dataset scored per head, and the HRV concept each belongs to.
KIND_CONCEPT = {"color": "colour", "shape": "shape", "size": "size"}
#: Token classes of the attention-sink analysis, in table order.
TOKEN_CLASSES = ("start", "own words", "other objects' words", "other words", "end", "padding")
REAL_NOISE = 0.5


def short(name: str) -> str:
    return LayerInfo(name, 0, 0).short_name


# -- 1. stability --------------------------------------------------------------------------------
def stability(pipe, captions, steps, guidance, batch, out: Path):
    halves = [attnscope.hrv.build(pipe, attnscope.hrv.shapes_concepts(), captions, shard=(i, 2), batch=batch,
                                  checkpoint=out / f"hrv-half{i}", num_inference_steps=steps, guidance_scale=guidance)
              for i in range(2)]
    hrv = attnscope.hrv.merge(halves)
    return hrv, halves[0].rank_correlation(halves[1])


# -- 2. real protocol ----------------------------------------------------------------------------
def real_protocol(pipe, hrv, scenes, batch):
    """Scores of the four methods, the k sweep, and per-head IoU by word kind."""
    pairs, sweep_rows = [], []
    per_head = {kind: [] for kind in KIND_CONCEPT}  # kind -> rows of per-head IoU, one row per pair
    ks = sorted({max(1, round(f * hrv.n_heads)) for f in SWEEP_FRACTIONS})
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        tc = trace_images(pipe, np.stack([s.image for s in chunk]), [s.caption for s in chunk], noise=REAL_NOISE,
                          seed=start * 31)  # the seeds of `attnscope eval --protocol real --seed 0`
        results = {name: tc.run(name) for name in METHODS}
        scored = collect_pairs(results, chunk, [s.word_masks for s in chunk], offset=start, per_head="daam")
        pairs += scored
        for pair in scored:  # every head's own DAAM map, scored alone (attnscope.eval.heads)
            if pair.kind in per_head:
                per_head[pair.kind].append(pair.heads)
        daam = results["daam"]
        items = [(i, list(daam.word_tokens(i)[index].tokens), mask) for i, scene in enumerate(chunk)
                 for index, mask in scene.word_masks.items()
                 if index < len(daam.word_tokens(i)) and scene.word_kinds[index] in KIND_CONCEPT]
        if items:
            sweep_rows.append(k_sweep(results["selective"], items, ks))
    sweep = pooled_sweep(sweep_rows, ks)
    head_iou = {kind: np.asarray(rows).mean(axis=0).tolist() for kind, rows in per_head.items() if rows}
    return summarize(pairs, METHODS), sweep, head_iou, {kind: len(rows) for kind, rows in per_head.items()}


def relevance_vs_localisation(hrv, head_iou: dict, k: int) -> list[dict]:
    rows = []
    for kind, values in head_iou.items():
        concept = KIND_CONCEPT[kind]
        by_iou = [int(h) for h in np.argsort(-np.asarray(values), kind="stable")[:k]]
        rows.append({"word kind": kind, "spearman(HRV row, per-head IoU)": spearman(hrv.row(concept), torch.tensor(values)),
                     f"top-{k} by HRV in top-{k} by IoU": len(set(hrv.top_heads(concept, k)) & set(by_iou)),
                     "best head": f"{short(hrv.heads[by_iou[0]][0])}/{hrv.heads[by_iou[0]][1]}",
                     "best head IoU": round(values[by_iou[0]], 3),
                     "HRV's top head IoU": round(values[hrv.top_heads(concept, 1)[0]], 3)})
    return rows


# -- 3. attention sinks --------------------------------------------------------------------------
def token_classes(result, scene, image: int, n_tokens: int, obj: int) -> list[list[int]]:
    """Stored token positions of each of :data:`TOKEN_CLASSES` for object ``obj`` of ``scene``."""
    words = result.word_tokens(image)
    own, others, rest = [], [], []
    for index, word in enumerate(words):
        kind = scene.word_kinds.get(index)
        target = own if kind in KIND_CONCEPT and scene.word_objects.get(index) == obj else \
            others if kind in KIND_CONCEPT else rest
        target += list(word.tokens)
    end = max(p for w in words for p in w.tokens) + 1
    return [[0], own, others, rest, [end], list(range(end + 1, n_tokens))]


def attention_sinks(pipe, scenes, steps, guidance, batch):
    """Mean share of object pixels' attention per token class: ``(steps, heads, classes)``, and the
    largest deviation of a pixel's attention from summing to 1 (a check that every key was kept)."""
    shares, weight, worst = None, 0, 0.0
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        generators = [torch.Generator().manual_seed(start + j) for j in range(len(chunk))]
        with attnscope.trace(pipe, keep_steps=True, keep_padding=True) as tc:
            out = pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators, output_type="np")
        result = tc.daam()
        images = [(np.asarray(i) * 255).round().astype(np.uint8) for i in out.images]
        blocks = [result.per_step[layer.name] for layer in result.layers]  # (steps, images, heads, tokens, h, w)
        if shares is None:
            shares = np.zeros((blocks[0].shape[0], sum(b.shape[2] for b in blocks), len(TOKEN_CLASSES)))
        for i, (scene, image) in enumerate(zip(chunk, images)):
            masks = masks_for_words(detect(image), scene)
            for obj in range(len(scene.objects)):
                index = next((w for w, o in scene.word_objects.items() if o == obj and scene.word_kinds[w] == "shape"), None)
                if index is None or index not in masks:
                    continue  # the object was not drawn: no pixels to follow
                mask = torch.from_numpy(masks[index].astype(np.float32))[None, None]
                classes = token_classes(result, scene, i, blocks[0].shape[3], obj)  # every layer keeps the same tokens
                column = 0
                for block in blocks:
                    grid = F.interpolate(mask, size=block.shape[-2:], mode="area")[0, 0]
                    probs = block[:, i].float()  # (steps, heads, tokens, h, w)
                    pixel_total = (probs.sum(2) * grid).sum((-1, -2)) / grid.sum()
                    worst = max(worst, float((pixel_total - 1).abs().max()))
                    for c, positions in enumerate(classes):
                        if positions:
                            share = (probs[:, :, positions].sum(2) * grid).sum((-1, -2)) / grid.sum()
                            shares[:, column : column + probs.shape[1], c] += share.numpy()
                    column += probs.shape[1]
                weight += 1
    return shares / max(1, weight), weight, worst, [(l.name, l.heads) for l in result.layers]


def sink_tables(shares, layout, steps: int) -> tuple[list[dict], list[dict], list[dict]]:
    by_layer, column = [], 0
    for name, heads in layout:
        mean = shares[:, column : column + heads].mean(axis=(0, 1))
        by_layer.append({"layer": short(name), **{c: round(float(v), 3) for c, v in zip(TOKEN_CLASSES, mean)}})
        column += heads
    marks = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    by_step = [{"step": s, **{c: round(float(v), 3) for c, v in zip(TOKEN_CLASSES, shares[s].mean(axis=0))}} for s in marks]
    per_head, column = [], 0
    for name, heads in layout:
        for h in range(heads):
            mean = shares[:, column + h].mean(axis=0)
            per_head.append({"head": f"{short(name)}/{h}", **{c: round(float(v), 3) for c, v in zip(TOKEN_CLASSES, mean)}})
        column += heads
    return by_layer, by_step, per_head


# -- 4. strengthening against the gate ------------------------------------------------------------
def strengthened_gate(pipe, hrv, scenes, steps, guidance) -> dict:
    arms = {"plain": ("", None), "colour words strengthened": ("color", "colour"),
            "shape words strengthened": ("shape", "shape")}
    passed = {arm: [] for arm in arms}
    for i, scene in enumerate(scenes):
        for arm, (kind, concept) in arms.items():
            words = sorted({scene.words[w] for w, k in scene.word_kinds.items() if k == kind})
            edits = [attnscope.hrv.strengthen(hrv, word=w, concept=concept) for w in words]
            steering = attnscope.steer(pipe, functools.reduce(operator.add, edits)) if edits else contextlib.nullcontext()
            with steering:
                image = pipe(scene.caption, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                             generator=torch.Generator().manual_seed(i)).images[0]
            hits = match_objects(detect((image * 255).round().astype(np.uint8)), scene.objects)
            passed[arm].append(all(h is not None for h in hits))
    plain = passed["plain"]
    report = {}
    for arm, results in passed.items():
        fixed = sum(not a and b for a, b in zip(plain, results))
        broken = sum(a and not b for a, b in zip(plain, results))
        report[arm] = {"pass rate": round(sum(results) / len(results), 4), "fixed": fixed, "broken": broken,
                       "plain failures": len(plain) - sum(plain),
                       "McNemar p": 1.0 if arm == "plain" else round(mcnemar_exact(broken, fixed), 4)}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=1000, help="training captions for the HRV (two halves)")
    parser.add_argument("--scenes", type=int, default=200, help="test images of the real protocol")
    parser.add_argument("--sink-scenes", type=int, default=50, help="test captions of the attention-sink analysis")
    parser.add_argument("--gate", type=int, default=200, help="test captions of the strengthening gate")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--top", type=int, default=7, help="k of the relevance/localisation overlap")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, steps, guidance, report = start_run(args)
    timings = {}

    clock = time.perf_counter()
    captions = [s.caption for s in make_scenes(0, args.prompts, split="train")]
    hrv, stable = stability(pipe, captions, steps, guidance, args.batch, args.out)
    hrv.save(args.out / "hrv")
    hrv.plot().save(args.out / "hrv.png")
    attnscope.hrv.attach(pipe, hrv)
    timings["hrv"] = time.perf_counter() - clock

    clock = time.perf_counter()
    scores, sweep, head_iou, head_pairs = real_protocol(pipe, hrv, make_scenes(0, args.scenes, split="test"), args.batch)
    agreement = relevance_vs_localisation(hrv, head_iou, min(args.top, hrv.n_heads))
    timings["real protocol"] = time.perf_counter() - clock

    clock = time.perf_counter()
    shares, objects, worst, layout = attention_sinks(pipe, make_scenes(0, args.sink_scenes, split="test"), steps,
                                                     guidance, min(args.batch, 10))
    by_layer, by_step, sink_heads = sink_tables(shares, layout, steps)
    timings["sinks"] = time.perf_counter() - clock

    clock = time.perf_counter()
    gate = strengthened_gate(pipe, hrv, make_scenes(0, args.gate, split="test"), steps, guidance)
    timings["gate"] = time.perf_counter() - clock

    head_rows = []
    for h, (name, local) in enumerate(hrv.heads):
        row = {"head": f"{short(name)}/{local}"}
        row.update({f"HRV {KIND_CONCEPT[k]}": round(float(hrv.row(KIND_CONCEPT[k])[h]), 2) for k in head_iou})
        row.update({f"IoU {k}": round(v[h], 3) for k, v in head_iou.items()})
        row["start share"] = sink_heads[h]["start"] if h < len(sink_heads) else float("nan")
        head_rows.append(row)

    lines = [f"# Head-level HRV measurements on shapes-unet ({steps} steps, guidance {guidance})", "",
             f"## HRV stability: two disjoint halves of {len(captions)} training captions", "",
             "Spearman rank correlation of each concept's row: " +
             ", ".join(f"{c} {v:.3f}" for c, v in stable.items()), "", "Merged HRV (hrv.png):", "", hrv.summary(5), "",
             f"## Real protocol ({args.scenes} test images, noise {REAL_NOISE})", "", markdown_table(scores), "",
             "### k sweep (mIoU per pair)", ""] + markdown_rows(sweep) + [
             "", f"### Relevance against localisation (per-head IoU at τ = 0.4; pairs: {head_pairs})", ""] + \
        markdown_rows(agreement) + ["", "### Per head (real protocol IoU; start share: object pixels' attention on the "
                                "start token, generated protocol)", ""] + markdown_rows(head_rows) + [
             "", f"## Where object pixels' attention goes ({objects} drawn objects of {args.sink_scenes} captions; "
                 f"largest deviation of a pixel's total from 1: {worst:.2e})", "", "### By layer (mean over steps and heads)",
             ""] + markdown_rows(by_layer) + ["", "### By step (mean over layers' heads)", ""] + markdown_rows(by_step) + [
             "", f"## Strengthening against the quality gate ({args.gate} test captions, one image each)", ""] + \
        markdown_rows([{"arm": arm, **v} for arm, v in gate.items()]) + [
             "", "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    report.update(stability=stable, real_protocol=scores, k_sweep=sweep, per_head_iou=head_iou, head_pairs=head_pairs,
                  relevance_vs_localisation=agreement, sinks={"objects": objects, "max_total_deviation": worst,
                                                               "by_layer": by_layer, "by_step": by_step,
                                                               "per_head": sink_heads},
                  strengthening_gate=gate, seconds=timings)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
