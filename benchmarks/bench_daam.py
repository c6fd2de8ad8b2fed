"""Side-by-side cost of DAAM tracing: plain generation vs attnscope vs daam 0.2.0, in one process.

Same pipeline, prompt and seed for every mode; modes are interleaved over repeats and the median
is reported, so machine noise hits all modes alike. Ratios are against plain generation.

    python benchmarks/bench_daam.py --repeats 5 --out benchmarks/results/bench_daam.md

Needs ``pip install --no-deps daam==0.2.0`` (+ matplotlib, scipy) for the reference column.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import attnscope
from attnscope.testing import sd_proportioned_pipeline, tiny_sd_pipeline

PROMPT = "a cat and a giraffe with a red hat"
WORD = "giraffe"


def import_daam():
    if "spacy" not in sys.modules:
        try:
            import spacy  # noqa: F401
        except ImportError:  # daam imports spaCy only for dependency parsing, unused here
            stub = types.ModuleType("spacy")
            stub.tokens = types.ModuleType("spacy.tokens")
            stub.tokens.Token = object
            sys.modules["spacy"], sys.modules["spacy.tokens"] = stub, stub.tokens
    try:
        import daam

        return daam
    except ImportError:
        return None


def generate(pipe, steps):
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))


def run_plain(pipe, steps):
    t = time.perf_counter()
    generate(pipe, steps)
    return time.perf_counter() - t, None


def run_attnscope(pipe, steps):
    t = time.perf_counter()
    with attnscope.trace(pipe) as tc:
        generate(pipe, steps)
    elapsed = time.perf_counter() - t
    stored = sum(x.numel() * x.element_size() for x in tc.generation().sums.values())
    heat = tc.daam()
    t = time.perf_counter()
    heat.word(WORD)
    return elapsed, (stored, time.perf_counter() - t)


def run_daam(daam, pipe, steps):
    t = time.perf_counter()
    with daam.trace(pipe) as tr:
        out = generate(pipe, steps)
        elapsed = time.perf_counter() - t
        stored = sum(x.numel() * x.element_size() for x in tr.all_heat_maps.ids_to_heatmaps.values())
        t = time.perf_counter()
        try:
            tr.compute_global_heat_map().compute_word_heat_map(WORD).expand_as(out.images[0])
            word_time = time.perf_counter() - t
        except RuntimeError:  # daam hard-codes SD latent sizes and finds no maps elsewhere
            word_time = float("nan")
    return elapsed, (stored, word_time)


def bench(name, pipe, steps, repeats, daam):
    modes = {"plain": lambda: run_plain(pipe, steps), "attnscope": lambda: run_attnscope(pipe, steps)}
    if daam is not None:
        modes["daam 0.2.0"] = lambda: run_daam(daam, pipe, steps)
    for fn in modes.values():  # warm-up
        fn()
    times = {m: [] for m in modes}
    extras = {}
    for _ in range(repeats):
        for mode, fn in modes.items():
            elapsed, extra = fn()
            times[mode].append(elapsed)
            if extra is not None:
                extras.setdefault(mode, []).append(extra)
    plain = statistics.median(times["plain"])
    rows = []
    for mode in modes:
        med = statistics.median(times[mode])
        stored = extras[mode][0][0] if mode in extras else None
        word = statistics.median(e[1] for e in extras[mode]) if mode in extras else None
        rows.append((name, steps, mode, med, med / plain, stored, word))
    return rows


def steps_independence(pipe, daam):
    out = {}
    for steps in (2, 8):
        out.setdefault("attnscope", []).append(run_attnscope(pipe, steps)[1][0])
        if daam is not None:
            out.setdefault("daam 0.2.0", []).append(run_daam(daam, pipe, steps)[1][0])
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    daam = import_daam()
    pipes = {"tiny (32² image, 16² latent)": tiny_sd_pipeline(), "SD-proportioned (512² image, 64² latent)": sd_proportioned_pipeline()}
    rows, growth = [], {}
    for name, pipe in pipes.items():
        rows += bench(name, pipe, args.steps, args.repeats, daam)
        growth[name] = steps_independence(pipe, daam)
    lines = [
        f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, CFG 7.5, median of {args.repeats} interleaved repeats",
        "",
        "| pipeline | mode | time (s) | × plain | stored map bytes | one word map (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, steps, mode, med, ratio, stored, word in rows:
        lines.append(f"| {name} | {mode} | {med:.3f} | {ratio:.3f} | {stored if stored is not None else '—'} | "
                     f"{'—' if word is None else ('fails: no maps found' if word != word else f'{word * 1000:.1f}')} |")
    lines += ["", "Stored bytes at 2 and 8 steps (must not grow):", ""]
    for name, by_mode in growth.items():
        for mode, sizes in by_mode.items():
            lines.append(f"- {name}, {mode}: {sizes[0]} → {sizes[1]}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
