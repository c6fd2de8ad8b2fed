"""Cost of tracing MM-DiT pipelines: DAAM on joint attention and ConceptAttention, in one process.

For each pipeline, four modes run interleaved over repeats — plain generation, a DAAM trace, a trace
with ``concepts=`` (ConceptAttention's concept stream beside DAAM's reading), and the same with
``layers=[]`` (the concept stream alone) — and report:

- the median time and the spread of the repeats, as multiples of plain generation's median;
- the direct cost: ``trace(pipe, profile=True)`` times attnscope's own code in every denoising call
  (observer, tap dispatch, hooks, and the concept stream as ``extension``) as a share of the call;
- the stored bytes after 2 and after 6 steps (must not grow with steps);
- with ``--memory``, the peak resident memory of each mode, each in a fresh process.

Pipelines: the shipped ``shapes-mmdit`` as it ships (64² images), and tiny-weight SD3 and Flux
pipelines with the token counts of SD3 / Flux at 1024² (4,096 image tokens; CLIP 77 + T5 256 text
tokens for SD3, T5 512 for Flux). Their transformers are tiny, so attention reading weighs far
more than in the real models: a worst case.

    python benchmarks/bench_mmdit.py --repeats 3 --memory --out benchmarks/results/bench_mmdit.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import attnscope
from reporting import emit  # benchmarks/ is the script's folder

PROMPT = "a red circle to the left of a blue square"
CONCEPTS = ["circle", "square", "background"]
PIPELINES = ("shapes-mmdit", "sd3-proportioned", "flux-proportioned")
MODES = ("plain", "daam", "concept attention", "concept attention alone")


def sd3_proportioned():
    """Tiny SD3 weights; 256² images give 64×64 = 4,096 image tokens (SD3 at 1024²)."""
    from diffusers import SD3Transformer2DModel

    from attnscope.testing import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline()
    torch.manual_seed(0)
    pipe.transformer = SD3Transformer2DModel(
        sample_size=64, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=64).eval()
    return pipe, {"height": 256, "width": 256, "max_sequence_length": 256}


def flux_proportioned():
    """Tiny Flux weights; 256² images give 64×64 = 4,096 packed image tokens (Flux at 1024²)."""
    from attnscope.testing import tiny_flux_pipeline

    return tiny_flux_pipeline(), {"height": 256, "width": 256, "max_sequence_length": 512}


def build(name: str):
    if name == "shapes-mmdit":
        pipe = attnscope.load_pipeline("shapes-mmdit", device="cpu")
        pipe.set_progress_bar_config(disable=True)
        return pipe, {}
    return {"sd3-proportioned": sd3_proportioned, "flux-proportioned": flux_proportioned}[name]()


def run(pipe, kwargs, mode: str, steps: int, profile: bool = False):
    """One generation in ``mode``; returns (seconds, trace or None)."""
    options = {"profile": profile} if mode != "plain" else {}
    if mode.startswith("concept attention"):
        options["concepts"] = CONCEPTS
    if mode == "concept attention alone":  # no layer read for DAAM: only the concept stream runs
        options["layers"] = []
    start = time.perf_counter()
    if mode == "plain":
        pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kwargs)
        return time.perf_counter() - start, None
    with attnscope.trace(pipe, **options) as tc:
        pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kwargs)
    elapsed = time.perf_counter() - start
    tc.daam() if mode == "daam" else tc.concept_attention()
    return elapsed, tc


def stored_bytes(tc) -> int:
    gen = tc.generation()
    tensors = list(gen.sums.values())
    for extra in gen.extras.values():
        tensors += [t for t in _tensors_in(extra)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _tensors_in(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)
    elif hasattr(value, "__dict__"):
        yield from _tensors_in(vars(value))


def bench(name: str, steps: int, repeats: int) -> dict:
    pipe, kwargs = build(name)
    for mode in MODES:  # warm-up
        run(pipe, kwargs, mode, 1)
    times = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            times[mode].append(run(pipe, kwargs, mode, steps)[0])
    plain = statistics.median(times["plain"])
    rows = {mode: {"median_s": statistics.median(t), "ratio": statistics.median(t) / plain,
                   "spread": [min(t) / plain, max(t) / plain]} for mode, t in times.items()}
    for mode in MODES[1:]:
        calls = []
        for _ in range(repeats):
            calls += run(pipe, kwargs, mode, steps, profile=True)[1].profile.calls[1:]
        fractions = [c["attnscope"] / c["call"] for c in calls]
        rows[mode]["direct"] = {"calls": len(calls), "share": statistics.median(fractions),
                                "share_min": min(fractions), "share_max": max(fractions),
                                "extension_share": statistics.median(c["extension"] / c["call"] for c in calls)}
        rows[mode]["stored_bytes"] = [stored_bytes(run(pipe, kwargs, mode, n)[1]) for n in (2, 6)]
    return rows


def child_peak(name: str, mode: str, steps: int) -> None:
    """In a fresh process: build, run ``mode`` once, print the peak resident memory in bytes."""
    torch.set_num_threads(1)
    pipe, kwargs = build(name)
    run(pipe, kwargs, mode, steps)
    print(json.dumps({"peak_rss": high_water_mark()}))


def high_water_mark() -> int:
    """This process's peak resident memory in bytes: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``,
    which on Linux a child inherits from its parent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(name: str, steps: int) -> dict:
    out = {}
    for mode in MODES:
        done = subprocess.run([sys.executable, __file__, "--child", name, mode, "--steps", str(steps)],
                              capture_output=True, text=True, check=True)
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]
    return out


def report(results: dict, memory: dict, args) -> str:
    lines = [f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, median of {args.repeats} "
             f"interleaved repeats; concepts {CONCEPTS}", "",
             "| pipeline | mode | time (s) | × plain | spread of repeats | attnscope share of a call: median (min–max) "
             "| of which concept stream | stored bytes at 2 → 6 steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for mode, r in rows.items():
            direct = r.get("direct")
            share = "—" if not direct else (f"{direct['share']:.2%} ({direct['share_min']:.2%}–"
                                            f"{direct['share_max']:.2%})")
            ext = "—" if not direct else f"{direct['extension_share']:.2%}"
            stored = "—" if "stored_bytes" not in r else f"{r['stored_bytes'][0]} → {r['stored_bytes'][1]}"
            lines.append(f"| {name} | {mode} | {r['median_s']:.3f} | {r['ratio']:.3f} | "
                         f"{r['spread'][0]:.3f}–{r['spread'][1]:.3f} | {share} | {ext} | {stored} |")
    if memory:
        lines += ["", "Peak resident memory, each mode in a fresh process (one generation):", "",
                  "| pipeline | plain (MiB) | " + " | ".join(f"{m}: extra (MiB)" for m in MODES[1:]) + " |",
                  "|---|---|" + "---|" * (len(MODES) - 1)]
        for name, peaks in memory.items():
            base = peaks["plain"]
            extra = " | ".join(f"{(peaks[m] - base) / 2**20:+.0f}" for m in MODES[1:])
            lines.append(f"| {name} | {base / 2**20:.0f} | {extra} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (at least 2: the first call is warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per mode (fresh processes)")
    parser.add_argument("--memory-only", action="store_true", help="measure only the peak memory")
    parser.add_argument("--child", nargs=2, metavar=("PIPELINE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps {args.steps}: the direct cost skips each run's first call as warm-up; give at least 2.")
    torch.set_num_threads(args.threads)
    if args.child:
        child_peak(args.child[0], args.child[1], args.steps)
        return
    results = {} if args.memory_only else {name: bench(name, args.steps, args.repeats) for name in args.pipelines}
    measure = args.memory or args.memory_only
    memory = {name: peak_memory(name, args.steps) for name in args.pipelines} if measure else {}
    text = report(results, memory, args)
    emit(text, args.out)


if __name__ == "__main__":
    main()
