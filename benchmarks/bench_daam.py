"""Cost of DAAM tracing, measured two ways in one process.

1. Side by side: plain generation vs attnscope vs daam 0.2.0 on the same pipeline, prompt and seed;
   modes are interleaved over repeats and the median is reported with the spread of the repeats
   (min–max over the median of plain generation), so machine noise hits all modes alike.
2. Directly: ``attnscope.trace(pipe, profile=True)`` times attnscope's own hooks inside each
   denoising call (observer, tap dispatch, module hooks; :mod:`attnscope.core.profile`) and reports
   their share of the call — free of the run-to-run noise that a difference of two totals carries.
   ``--sd15`` adds Stable Diffusion 1.5's real UNet layout (random weights, 860 M parameters).

    python benchmarks/bench_daam.py --repeats 5 --sd15 --out benchmarks/results/bench_daam.md

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
from reporting import emit  # benchmarks/ is the script's folder

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
        spread = (min(times[mode]) / plain, max(times[mode]) / plain)
        stored = extras[mode][0][0] if mode in extras else None
        word = statistics.median(e[1] for e in extras[mode]) if mode in extras else None
        rows.append((name, steps, mode, med, med / plain, spread, stored, word))
    return rows


def direct_cost(pipe, steps, repeats):
    """attnscope's share of each denoising call, from the profiled hooks (first call skipped)."""
    calls = []
    for _ in range(repeats):
        with attnscope.trace(pipe, profile=True) as tc:
            generate(pipe, steps)
        calls += tc.profile.calls[1:]
    tc.profile.calls = [calls[0]] + calls  # summary() skips the first as warm-up
    return tc.profile.summary(skip_first=1)


def sd15_layout_pipeline():
    """Stable Diffusion 1.5's UNet (its published config, random weights) with the tiny text encoder
    (width 768) and 8× VAE of the SD-proportioned test pipeline: real attention and convolution cost."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = sd_proportioned_pipeline()
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    tok = pipe.tokenizer
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=768, num_hidden_layers=1, num_attention_heads=8,
        max_position_embeddings=77, bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1)).eval()
    return pipe


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
    parser.add_argument("--sd15", action="store_true", help="also measure the direct cost on SD 1.5's UNet layout (slow)")
    parser.add_argument("--sd15-steps", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    daam = import_daam()
    pipes = {"tiny (32² image, 16² latent)": tiny_sd_pipeline(), "SD-proportioned (512² image, 64² latent)": sd_proportioned_pipeline()}
    rows, growth, direct = [], {}, {}
    for name, pipe in pipes.items():
        rows += bench(name, pipe, args.steps, args.repeats, daam)
        growth[name] = steps_independence(pipe, daam)
        direct[name] = direct_cost(pipe, args.steps, args.repeats)
    if args.sd15:
        direct["SD 1.5 UNet layout, random weights (512² image)"] = direct_cost(sd15_layout_pipeline(), args.sd15_steps, 1)
    lines = [
        f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, CFG 7.5, median of {args.repeats} interleaved repeats",
        "",
        "| pipeline | mode | time (s) | × plain | spread of repeats (× plain median) | stored map bytes | one word map (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, steps, mode, med, ratio, spread, stored, word in rows:
        lines.append(f"| {name} | {mode} | {med:.3f} | {ratio:.3f} | {spread[0]:.3f}–{spread[1]:.3f} | "
                     f"{stored if stored is not None else '—'} | "
                     f"{'—' if word is None else ('fails: no maps found' if word != word else f'{word * 1000:.1f}')} |")
    lines += ["", "Direct cost: time inside attnscope per denoising call (profiled hooks; median over calls, "
              "first call skipped), as a share of the traced call:", "",
              "| pipeline | calls | call (ms) | attnscope (ms) | observer | tap dispatch | hooks | share of call (min–max) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, d in direct.items():
        lines.append(f"| {name} | {d['calls']} | {d['call_s'] * 1e3:.1f} | {d['attnscope_s'] * 1e3:.2f} | "
                     f"{d['observer_s'] * 1e3:.2f} | {d['dispatch_s'] * 1e3:.3f} | {d['hooks_s'] * 1e3:.3f} | "
                     f"{d['fraction']:.2%} ({d['fraction_min']:.2%}–{d['fraction_max']:.2%}) |")
    lines += ["", "Stored bytes at 2 and 8 steps (must not grow):", ""]
    for name, by_mode in growth.items():
        for mode, sizes in by_mode.items():
            lines.append(f"- {name}, {mode}: {sizes[0]} → {sizes[1]}")
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
