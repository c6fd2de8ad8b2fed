"""Why ConceptAttention scores low on shape nouns of the shipped MM-DiT: three checks on the real protocol.

    python benchmarks/concept_diagnostics.py --out docs/results/concept-diagnostics
    python benchmarks/concept_diagnostics.py --out /tmp/cd --scenes 4 --batch 4            # smoke run

1. Concept set: ConceptAttention and its cross-attention baseline with only the words of one kind
   (shape nouns, or colour words) plus ``background`` as concepts, instead of every caption word.
2. Selection: each double-stream block alone and all together, in the output, value and
   cross-attention spaces, with the paper's per-block softmax and without a softmax.
3. Words on their own: DAAM with the word alone as the prompt ("circle", "a circle", "a picture of
   a circle") against DAAM with the whole caption — what the model ties to a word without context.

mIoU per (image, word) pair: concept maps thresholded at their mean, DAAM at 0.4 of its maximum
(the eval protocol's rules); the scenes and noise draws of ``attnscope eval --protocol real``.
Writes ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import attnscope
from attnscope.datasets.shapes import COLORS, SHAPES, make_scenes
from attnscope.eval.metrics import iou
from attnscope.methods import binarize
from attnscope.realimages import trace_images
from reporting import markdown_rows  # benchmarks/ is the script's folder

KINDS = {"shape": list(SHAPES), "color": list(COLORS)}
TEMPLATES = ("{w}", "a {w}", "a picture of a {w}")


def batches(scenes, batch):
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        yield start, chunk, np.stack([s.image for s in chunk])


def words_of(scene, kind):
    return [(scene.words[i], scene.word_masks[i]) for i, k in scene.word_kinds.items() if k == kind]


def concept_sets(pipe, scenes, batch) -> list[dict]:
    rows = []
    for kind, vocabulary in KINDS.items():
        scores = {"concept_attention": [], "concept_cross_attention": []}
        for start, chunk, images in batches(scenes, batch):
            tc = trace_images(pipe, images, [s.caption for s in chunk], noise=0.5, seed=start * 31,
                              concepts=vocabulary + ["background"], layers=[])
            for name, values in scores.items():
                result = tc.run(name)
                values += [iou(binarize(name, result.raw_map(w, i).numpy()), m)
                           for i, s in enumerate(chunk) for w, m in words_of(s, kind)]
        rows += [{"words": kind, "concepts": f"{kind} words + background", "method": name,
                  "mIoU": float(np.mean(v)), "pairs": len(v)} for name, v in scores.items()]
    return rows


def selections(pipe, scenes, batch) -> list[dict]:
    scores: dict = {}
    for start, chunk, images in batches(scenes, batch):
        caption_words = sorted({w for s in chunk for kind in KINDS for w, _ in words_of(s, kind)})
        tc = trace_images(pipe, images, [s.caption for s in chunk], noise=0.5, seed=start * 31,
                          concepts=caption_words + ["background"], layers=[])
        ca = tc.concept_attention()
        blocks = [[l.name] for l in ca.layers]
        for space in ("output", "value", "cross_attention"):
            for softmax in (("per_layer",) if space == "cross_attention" else ("per_layer", "none")):
                for layers in [None] + blocks:
                    key = (space, softmax, "all" if layers is None else ca.layers[blocks.index(layers)].short_name)
                    for i, s in enumerate(chunk):
                        for kind in KINDS:
                            for w, m in words_of(s, kind):
                                soft = ca.concept(w, i, space=space, layers=layers, softmax=softmax).numpy()
                                scores.setdefault(key + (kind,), []).append(iou(soft > soft.mean(), m))
    return [{"space": k[0], "softmax": k[1], "blocks": k[2], "words": k[3], "mIoU": float(np.mean(v))}
            for k, v in scores.items()]


def lone_words(pipe, scenes, batch) -> list[dict]:
    rows = []
    for template in ("caption",) + TEMPLATES:
        for kind in KINDS:
            scores = []
            for start, chunk, images in batches(scenes, batch):
                items = [words_of(s, kind)[0] for s in chunk]  # the first word of that kind in each caption
                prompts = [s.caption if template == "caption" else template.format(w=w) for s, (w, _) in zip(chunk, items)]
                heat = trace_images(pipe, images, prompts, noise=0.5, seed=start * 31).daam()
                scores += [iou(binarize("daam", heat.raw_map(w, i).numpy()), m) for i, (w, m) in enumerate(items)]
            rows.append({"prompt": template, "words": kind, "mIoU": float(np.mean(scores)), "pairs": len(scores)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="shapes-mmdit")
    parser.add_argument("--scenes", type=int, default=100, help="test scenes (real protocol, noise 0.5)")
    parser.add_argument("--batch", type=int, default=25)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = attnscope.load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    scenes = make_scenes(0, args.scenes, split="test")
    report = {"model": args.model, "scenes": args.scenes, "concept_sets": concept_sets(pipe, scenes, args.batch),
              "selections": selections(pipe, scenes, args.batch), "lone_words": lone_words(pipe, scenes, args.batch)}
    lines = [f"# ConceptAttention diagnostics on {args.model} ({args.scenes} real scenes, noise 0.5)", "",
             "## 1. Concept set of one word kind", ""] + markdown_rows(report["concept_sets"]) + [
             "", "## 2. Blocks, spaces and softmax", ""] + markdown_rows(report["selections"]) + [
             "", "## 3. DAAM with the word alone as the prompt", ""] + markdown_rows(report["lone_words"])
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
