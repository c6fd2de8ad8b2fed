"""Cost of HRV construction and of steering, side by side with plain generation in one run.

Modes, interleaved over repeats on the same pipeline, prompt and seed (median, with the spread of the
repeats as a multiple of plain generation's median):

- ``plain``: generation to latents;
- ``hrv votes``: the same generation while every head votes (what ``attnscope.hrv.build`` adds per
  prompt; its one-time set-up — encoding the concept words, key tables — is timed separately);
- ``steer: strengthen``: one word strengthened by an HRV row (random relevance: every head edited);
- ``steer: weaken all``: every prompt-word token weakened in every head (the analysis's worst case).

A shared machine makes differences of totals noisy, so the handlers are also timed directly: the time
spent in attnscope's per-layer code (the original SDPA call excluded) per generation, as a share of
plain generation's fastest run.

Memory: on CUDA the peak allocated bytes of each mode; everywhere the bytes HRV construction keeps
(key tables, counts) and its largest per-call buffer (the ``(images, heads, pixels, keys)`` scores).
Targets (issue #28): votes ≤ 1.15 × plain, steering ≤ 1.05 × plain.

    python benchmarks/bench_hrv.py --repeats 3 --steps 4                       # tiny + SD-proportioned, CPU
    python benchmarks/bench_hrv.py --sd15 --device cuda --dtype float16 --steps 20 --out benchmarks/results/bench_hrv.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import attnscope
from attnscope.control import hooks
from attnscope.control.hooks import LayerHooks, model_layers
from attnscope.hrv.concepts import DEFAULT_CONCEPTS, encode_words
from attnscope.hrv.construct import VoteCounter
from attnscope.hrv.vectors import HeadRelevance
from attnscope.testing import sd_proportioned_pipeline, tiny_sd_pipeline
from reporting import emit  # benchmarks/ is the script's folder

PROMPT = "a photo of a cat with a red hat"
WORD, CONCEPT = "cat", "animal"


class HandlerClock:
    """Seconds spent in attnscope's handlers, minus the original SDPA calls they make."""

    def __init__(self):
        self.seconds = 0.0
        self.inner = 0.0
        original = hooks.SDPACall.original

        def timed_original(call):
            start = time.perf_counter()
            try:
                return original(call)
            finally:
                self.inner += time.perf_counter() - start

        hooks.SDPACall.original = timed_original

    def wrap(self, fn):
        def timed(*args):
            start, inner = time.perf_counter(), self.inner
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - start - (self.inner - inner)

        return timed

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


CLOCK = HandlerClock()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate(pipe, steps):
    return pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent")


def prepare_votes(pipe):
    """The vote counter build() uses, with its one-time set-up timed."""
    start = time.perf_counter()
    adapter, found = model_layers(pipe)
    counter = VoteCounter(found, encode_words(pipe, DEFAULT_CONCEPTS, adapter.text_encoder()[1]),
                          list(DEFAULT_CONCEPTS), seed=0)
    counter.image_ids = [0]
    setup = time.perf_counter() - start
    state = sum(t.numel() * t.element_size() for t in counter.tables.values()) + counter.counts.numel() * 8
    return counter, setup, state


def largest_scores(pipe, counter, latent_hw) -> int:
    """Bytes of the biggest ``(images, heads, pixels, keys)`` float32 buffer of one vote."""
    keys = 1 + sum(max(b - a for a, b in spans) for spans in counter.spans)
    _, found = model_layers(pipe)
    pixels = latent_hw[0] * latent_hw[1]  # the finest grid bounds every layer's
    return max(info.heads for info, _ in found) * pixels * keys * 4


def modes_for(pipe, steps, counter, hrv, n_heads):
    def plain():
        generate(pipe, steps)

    def votes():
        with LayerHooks(pipe, CLOCK.wrap(counter.handle), on_call=CLOCK.wrap(counter.on_call)):
            generate(pipe, steps)

    strengthen = attnscope.hrv.strengthen(hrv, word=WORD, concept=CONCEPT)
    weaken_all = attnscope.weaken(heads=range(n_heads))

    def steered(edit):
        def run():
            steering = attnscope.steer(pipe, edit)
            steering.handler = CLOCK.wrap(steering.handler)
            with steering:
                generate(pipe, steps)
        return run

    return {"plain": plain, "hrv votes": votes, "steer: strengthen": steered(strengthen),
            "steer: weaken all": steered(weaken_all)}


def bench(name, pipe, steps, repeats, device):
    counter, setup, state = prepare_votes(pipe)
    n_heads = counter.n_heads
    layout = attnscope.hrv.build(pipe, DEFAULT_CONCEPTS, [PROMPT], num_inference_steps=1)
    votes = torch.randint(1, 10, layout.matrix.shape, generator=torch.Generator().manual_seed(0))
    hrv = HeadRelevance.from_counts(votes, layout.concepts, layout.heads, words=layout.words)  # every weight ≠ 1
    modes = modes_for(pipe, steps, counter, hrv, n_heads)
    for fn in modes.values():  # warm-up
        fn()
    times, peaks, inside = {m: [] for m in modes}, {}, {m: [] for m in modes}
    for _ in range(repeats):
        for mode, fn in modes.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            CLOCK.take()
            fn()
            sync(device)
            times[mode].append(time.perf_counter() - start)
            inside[mode].append(CLOCK.take())
            if device.startswith("cuda"):
                peaks[mode] = torch.cuda.max_memory_allocated()
    latent_hw = tuple(generate(pipe, 1).images.shape[-2:])
    base, fastest = statistics.median(times["plain"]), min(times["plain"])
    rows = []
    for mode, ts in times.items():
        med = statistics.median(ts)
        rows.append((name, mode, med, med / base, min(ts) / fastest, statistics.median(inside[mode]) / fastest,
                     peaks.get(mode), None if "plain" not in peaks else peaks.get(mode, 0) / peaks["plain"]))
    extra = {"heads": n_heads, "setup_s": setup, "state_bytes": state,
             "largest_buffer_bytes": largest_scores(pipe, counter, latent_hw)}
    return rows, extra


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--sd15", action="store_true", help="also Stable Diffusion 1.5's UNet layout (random weights)")
    parser.add_argument("--only-sd15", action="store_true", help="skip the tiny pipelines")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    pipes = {} if args.only_sd15 else {"tiny (16² latent)": tiny_sd_pipeline,
                                       "SD-proportioned (64² latent)": sd_proportioned_pipeline}
    if args.sd15 or args.only_sd15:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_daam import sd15_layout_pipeline

        pipes["SD 1.5 UNet layout, random weights (64² latent)"] = sd15_layout_pipeline
    rows, extras = [], {}
    for name, make in pipes.items():
        pipe = make().to(args.device, dtype)
        pipe.set_progress_bar_config(disable=True)
        r, extras[name] = bench(name, pipe, args.steps, args.repeats, args.device)
        rows += r
    lines = [f"torch {torch.__version__}, {args.device} {args.dtype}, {args.threads} CPU thread(s), {args.steps} steps, "
             f"CFG 7.5, {len(DEFAULT_CONCEPTS)} concepts (attnscope's default vocabulary), median of {args.repeats} "
             "interleaved repeats", "",
             "| pipeline | mode | time (s) | × plain (medians) | × plain (fastest runs) | direct: handlers ÷ plain "
             "| peak CUDA bytes | × plain |",
             "|---|---|---|---|---|---|---|---|"]
    for name, mode, med, ratio, fastest, direct, peak, peak_ratio in rows:
        lines.append(f"| {name} | {mode} | {med:.3f} | {ratio:.3f} | {fastest:.3f} | {direct:.2%} | "
                     f"{'—' if peak is None else peak} | {'—' if peak_ratio is None else f'{peak_ratio:.3f}'} |")
    lines += ["", "HRV construction's own memory and one-time set-up:", "",
              "| pipeline | heads | set-up (s) | kept bytes (key tables, counts) | largest per-call buffer (bytes) |",
              "|---|---|---|---|---|"]
    for name, e in extras.items():
        lines.append(f"| {name} | {e['heads']} | {e['setup_s']:.3f} | {e['state_bytes']} | {e['largest_buffer_bytes']} |")
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
