"""Token identity of the shipped text encoders, and where the shipped UNet's attention goes (issue #27).

    python -m training.benchmarks.encoder_identity [--seeds 4] [--runs /tmp/idexp/base /tmp/idexp/id01 ...]

Prints Markdown: (1) ``attnscope.analysis.encoder_identity`` of both shipped models (relative
distance of each caption position to the start token's output, the closest lone-word pairs);
(2) the share of the shipped UNet's cross-attention (DAAM, all layers and heads, 20 steps,
padding kept) that pixels of each kind (the named objects, found by colour, and the background)
put on each token position, averaged over ``--seeds`` images; (3) with ``--runs``, the identity
probes (``OUT/identity.json``) of ``training.text_identity`` runs side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PROMPTS = {
    "a red circle to the left of a blue square": {"red": (0, 150, 1, 110, 2, 110), "blue": (2, 150, 0, 110, 1, 150)},
    "a picture of a large green star": {"green": (1, 150, 0, 110, 2, 110)},
}


def _colour_mask(pixels, rule):
    hi, hi_min, lo1, lo1_max, lo2, lo2_max = rule
    return (pixels[..., hi] > hi_min) & (pixels[..., lo1] < lo1_max) & (pixels[..., lo2] < lo2_max)


def attention_shares(pipe, prompt: str, colours: dict, seeds: int) -> tuple[list[str], dict]:
    import attnscope

    rows: dict[str, list] = {}
    for seed in range(seeds):
        with attnscope.trace(pipe, keep_padding=True) as tc:
            out = pipe(prompt, num_inference_steps=20, generator=torch.Generator().manual_seed(seed))
        heat = tc.daam()
        pixels = np.asarray(out.images[0]).astype(int)
        n = heat.maps[next(iter(heat.maps))].shape[2]
        maps = torch.stack([heat.token_map([i], 0) for i in range(n)])
        masks = {name: torch.from_numpy(_colour_mask(pixels, rule)) for name, rule in colours.items()}
        background = torch.ones_like(next(iter(masks.values())))
        for m in masks.values():
            background &= ~m
        masks["background"] = background
        for name, m in masks.items():
            if int(m.sum()) >= 5:
                v = maps[:, m].mean(1)
                rows.setdefault(name, []).append((v / v.sum()).numpy())
    return list(heat.tokens[0]), {k: np.mean(v, 0) for k, v in rows.items()}


def main(argv=None) -> None:
    from attnscope.analysis import encoder_identity
    from attnscope.pipelines import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    print("## Relative distance to the start token's output (distance / median distance between positions)\n")
    pipes = {name: load_pipeline(name, device="cpu") for name in ("shapes-unet", "shapes-mmdit")}
    for name, pipe in pipes.items():
        report = encoder_identity(pipe)
        print(f"**{name}** (layer {report.layer}, scale {report.scale:.2f})\n")
        for k in range(len(report.prompts)):
            table = report.position_table(k)
            print("| " + " | ".join(t.replace("</w>", "") for t, _, _ in table) + " |")
            print("|" + "---|" * len(table))
            print("| " + " | ".join(f"{r:.3f}" for _, _, r in table) + " |\n")
        print(f"summary {json.dumps({k: round(v, 4) for k, v in report.summary().items()})}; closest lone-word pairs "
              + ", ".join(f"{a}/{b} {r:.4f}" for a, b, r in report.closest_pairs(3)) + "\n")

    print(f"## shapes-unet: share of cross-attention per token position (DAAM, {args.seeds} seeds)\n")
    for prompt, colours in PROMPTS.items():
        tokens, shares = attention_shares(pipes["shapes-unet"], prompt, colours, args.seeds)
        words = [t.replace("</w>", "").replace("<|startoftext|>", "SOT").replace("<|endoftext|>", "EOT") for t in tokens]
        first_end = words.index("EOT")
        print(f"*{prompt}*\n")
        print("| pixels | " + " | ".join(words[:first_end + 1]) + " | padding |")
        print("|" + "---|" * (first_end + 3))
        for name, v in shares.items():
            print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v[:first_end + 1]) + f" | {v[first_end + 1:].sum():.2f} |")
        print()

    if args.runs:
        print("## Identity probes of training.text_identity runs (relative; positions 1-3 of both prompts)\n")
        print("| run | step | scale | min position | min lone word | min word pair | positions 1-3 |")
        print("|---|---|---|---|---|---|---|")
        for run in args.runs:
            for p in json.loads((run / "identity.json").read_text()):
                print(f"| {run.name} | {p['step']} | {p['scale']:.2f} | {p['min_position']:.3f} | {p['min_word']:.3f} | "
                      f"{p['min_pair']:.3f} | {p['positions_1_3']} |")


if __name__ == "__main__":
    main()
