"""HRV measurements on the shipped ShapesWorld UNet, in one command.

    python benchmarks/hrv_shapes.py --out benchmarks/results/hrv-shapes
    python benchmarks/hrv_shapes.py --out /tmp/hrv-smoke --prompts 4 --scenes 4 --steps 2 --cases 2   # smoke run

1. HRV: ``--prompts`` training captions, the ShapesWorld concepts (colour, shape, size, relation);
   checkpointed, so a rerun resumes; the summary lists each concept's top heads.
2. Segmentation (generated protocol, ``--scenes`` test captions): DAAM against the top-k, bottom-k
   and HRV-weighted heads (k = 25 % of the heads), mIoU per word kind.
3. k sweep: mIoU of the top-k and bottom-k heads' maps for k from one head to all.
4. Ordered weakening of colour and shape (MoRHF against LeRHF), scored by the detector.
5. Word swap: one-object captions, the colour word swapped; how often the edit shows the new colour
   with the source's shape, with and without HRV strengthening.
6. Attend-and-Excite: share of multi-object test captions drawn completely, plain against HRV-weighted.
7. Diagnose figures (most against least relevant heads) for the first scenes.

Writes ``results.md``, ``results.json`` and PNGs under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import attnscope
from attnscope.datasets.detect import detect, masks_for_words, match_objects
from attnscope.datasets.shapes import COLORS, make_scene, make_scenes
from attnscope.eval.report import markdown_table
from attnscope.eval.runner import collect_pairs, summarize
from attnscope.methods.selective import diagnose, k_sweep
from attnscope.pipelines import model_defaults

METHODS = ("daam", "selective", "selective-bottom", "hrv-weighted")
SWEEP_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def as_uint8(images) -> list[np.ndarray]:
    return [(np.asarray(i) * 255).round().astype(np.uint8) for i in images]


def segmentation(pipe, hrv, scenes, steps, guidance, batch, out: Path) -> tuple[dict, list[dict]]:
    """Steps 2, 3 and 7 on the same generated images."""
    pairs, sweep_rows = [], []
    ks = sorted({max(1, round(f * hrv.n_heads)) for f in SWEEP_FRACTIONS})
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        generators = [torch.Generator().manual_seed(start + j) for j in range(len(chunk))]
        with attnscope.trace(pipe) as tc:
            images = as_uint8(pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                                   generator=generators, output_type="np").images)
        gts = [masks_for_words(detect(image), scene) for image, scene in zip(images, chunk)]
        results = {name: tc.run(name) for name in METHODS}
        pairs += collect_pairs(results, chunk, gts, offset=start)
        selective = results["selective"]
        items = [(i, list(selective.word_tokens(i)[w].tokens), mask) for i, gt in enumerate(gts)
                 for w, mask in gt.items() if w < len(selective.word_tokens(i))]
        if items:
            sweep_rows.append(k_sweep(selective, items, ks))
        if start == 0:
            for i, scene in enumerate(chunk[:3]):
                for w in scene.word_kinds:
                    if scene.word_kinds[w] in ("color", "shape"):
                        diagnose(selective, scene.words[w], i).save(out / f"diagnose_{i}_{scene.words[w]}.png")
    return summarize(pairs, METHODS), pooled_sweep(sweep_rows, ks)


def pooled_sweep(sweep_rows: list[list[dict]], ks) -> list[dict]:
    """One k sweep from the sweeps of several batches (:func:`k_sweep` rows), weighted by their pairs."""
    sweep = []
    for j, k in enumerate(ks):
        n = sum(rows[j]["pairs"] for rows in sweep_rows)
        sweep.append({"k": k, "pairs": n, **{m: sum(rows[j][m] * rows[j]["pairs"] for rows in sweep_rows) / max(1, n)
                                            for m in ("top", "bottom")}})
    return sweep


def start_run(args) -> tuple:
    """``args.out`` made, the shipped shapes-unet loaded: ``(pipe, steps, guidance, report)`` with
    ``args.steps`` or the model's default steps, its guidance, and the report's first entries."""
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = attnscope.load_pipeline("shapes-unet", device=args.device)
    pipe.set_progress_bar_config(disable=True)
    defaults = model_defaults("shapes-unet")
    steps, guidance = args.steps or defaults["num_inference_steps"], defaults["guidance_scale"]
    return pipe, steps, guidance, {"model": "shapes-unet", "steps": steps, "guidance": guidance}


def word_swaps(pipe, hrv, n, steps, guidance) -> dict:
    """Step 5: one-object scenes, colour swapped to the next palette colour."""
    names = list(COLORS)
    counts = {"with HRV": [0, 0], "without HRV": [0, 0]}
    for index in range(n):
        scene = make_scene(10_000 + index, n_objects=1)
        obj = scene.objects[0]
        new = names[(names.index(obj.color) + 1) % len(names)]
        target = " ".join(new if w == obj.color else w for w in scene.words)
        for label, relevance in (("with HRV", hrv), ("without HRV", None)):
            source, edited = as_uint8(attnscope.hrv.word_swap(
                pipe, scene.caption, target, relevance, concept="colour", seed=index, num_inference_steps=steps,
                guidance_scale=guidance, output_type="np").images)
            found = detect(edited)
            shapes = {d.shape for d in detect(source)} or {obj.shape}
            counts[label][0] += any(d.color == new for d in found)
            counts[label][1] += any(d.color == new and d.shape in shapes for d in found)
    return {label: {"new colour": a / n, "new colour, source shape": b / n} for label, (a, b) in counts.items()}


def excite(pipe, hrv, scenes, steps, guidance) -> dict:
    """Step 6: complete drawings of multi-object captions, plain against HRV-weighted Attend-and-Excite."""
    complete = {"plain": 0, "HRV-weighted Attend-and-Excite": 0}
    for i, scene in enumerate(scenes):
        shapes = [scene.words[w] for w, kind in scene.word_kinds.items() if kind == "shape"]
        plain = pipe(scene.caption, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                     generator=torch.Generator().manual_seed(i)).images
        excited = attnscope.hrv.attend_and_excite(pipe, scene.caption, shapes, hrv, seed=i, num_inference_steps=steps,
                                                  guidance_scale=guidance, output_type="np").images
        for label, images in (("plain", plain), ("HRV-weighted Attend-and-Excite", excited)):
            hits = match_objects(detect(as_uint8(images)[0]), scene.objects)
            complete[label] += all(h is not None for h in hits)
    return {label: count / max(1, len(scenes)) for label, count in complete.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=1000, help="training captions for the HRV")
    parser.add_argument("--scenes", type=int, default=200, help="test captions for segmentation and the k sweep")
    parser.add_argument("--cases", type=int, default=50, help="captions per weakening setting, word swap and A&E")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    pipe, steps, guidance, report = start_run(args)
    timings = {}

    start = time.perf_counter()
    captions = [s.caption for s in make_scenes(0, args.prompts, split="train")]
    hrv = attnscope.hrv.build(pipe, attnscope.hrv.shapes_concepts(), captions, batch=args.batch,
                              checkpoint=args.out / "hrv-checkpoint", num_inference_steps=steps, guidance_scale=guidance)
    hrv.save(args.out / "hrv")
    attnscope.hrv.attach(pipe, hrv)
    timings["hrv"] = time.perf_counter() - start

    start = time.perf_counter()
    table, sweep = segmentation(pipe, hrv, make_scenes(0, args.scenes, split="test"), steps, guidance, args.batch,
                                args.out)
    timings["segmentation"] = time.perf_counter() - start

    start = time.perf_counter()
    multi = [s for s in make_scenes(1, 4 * args.cases, split="test") if len(s.objects) > 1][: args.cases]
    weakening = {}
    for concept in ("colour", "shape"):
        result = attnscope.hrv.ordered_weakening(pipe, hrv, concept, [(s.caption, s) for s in multi],
                                                 attnscope.hrv.ShapesScorer(concept), batch=args.batch,
                                                 num_inference_steps=steps, guidance_scale=guidance)
        result.plot().save(args.out / f"weakening_{concept}.png")
        weakening[concept] = result
    timings["weakening"] = time.perf_counter() - start

    start = time.perf_counter()
    swaps = word_swaps(pipe, hrv, args.cases, steps, guidance)
    excited = excite(pipe, hrv, multi, steps, guidance)
    timings["applications"] = time.perf_counter() - start

    lines = [f"# HRV on shapes-unet ({steps} steps, guidance {guidance})", "",
             f"HRV from {len(captions)} training captions:", "", hrv.summary(5), "",
             f"## Segmentation ({args.scenes} test captions, k = {round(0.25 * hrv.n_heads)} of {hrv.n_heads} heads)",
             "", markdown_table(table), "", "## k sweep (mIoU per pair)", "", "| k | top-k | bottom-k | pairs |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {r['top']:.3f} | {r['bottom']:.3f} | {r['pairs']} |" for r in sweep]
    for concept, result in weakening.items():
        lines += ["", f"## Ordered weakening: {concept} (share of objects whose {concept} the detector finds)", "",
                  result.table()]
    lines += ["", f"## Word swap ({args.cases} one-object captions, colour swapped)", "",
              "| | new colour | new colour, source shape |", "|---|---:|---:|"]
    lines += [f"| {label} | {v['new colour']:.2f} | {v['new colour, source shape']:.2f} |" for label, v in swaps.items()]
    lines += ["", f"## Attend-and-Excite ({len(multi)} multi-object captions drawn completely)", "",
              "| | complete |", "|---|---:|"] + [f"| {label} | {v:.2f} |" for label, v in excited.items()]
    lines += ["", "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    report.update(segmentation=table, k_sweep=sweep, weakening={c: r.to_dict() for c, r in weakening.items()},
                  word_swap=swaps, attend_and_excite=excited, seconds=timings)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
