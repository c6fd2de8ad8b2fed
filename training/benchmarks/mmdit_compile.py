"""Cost of the MM-DiT training step eager and under ``torch.compile`` (``train_mmdit --compile``),
side by side in one process.

Two copies of the shipped design's transformer, each with its own AdamW, take the same batches: forward under the zero-token mode with
the REPA tap, flow loss plus the REPA loss, backward, AdamW. The arms alternate, so machine noise
falls on both. Reports seconds per step after warm-up, their ratio, the time the first compiled
step took (compiling), and how far the two copies' losses drift apart (numerics only: same
weights, same batches).

    python -m training.benchmarks.mmdit_compile --steps 30 --out training/benchmarks/results/mmdit_compile.md
    python -m training.benchmarks.mmdit_compile --device cuda --mode reduce-overhead      # CUDA graphs on a GPU
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training import architectures as arch
from training import repa
from training.train_mmdit import ZeroTokenBias, adaln_zero, compiled

CONTEXT_TOKENS = 25  # 24 caption tokens and the single zero token, as in training
REPA_CHANNELS = 96  # the shipped UNet's 8×8 up-path features


class Arm:
    """One transformer, its REPA head and its optimizer; ``step`` trains on one batch and returns (loss, seconds)."""

    def __init__(self, transformer, head, mode, device):
        self.transformer, self.head, self.device = transformer, head, device
        self.forward = compiled(transformer, mode)
        self.opt = torch.optim.AdamW(list(transformer.parameters()) + list(head.parameters()), lr=1e-3)
        self.bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS)

    def step(self, batch):
        latent, noise, context, pooled, sigma, features = batch
        sync(self.device)
        started = time.perf_counter()
        with self.bias, repa.BlockTap(self.transformer, 2) as tap:
            pred = self.forward((1 - sigma) * latent + sigma * noise, encoder_hidden_states=context,
                                pooled_projections=pooled, timestep=sigma.flatten() * 1000).sample
            loss = F.mse_loss(pred, noise - latent) + 0.5 * repa.alignment_loss(tap.hidden, features, self.head)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        value = loss.item()  # waits for the device
        return value, time.perf_counter() - started


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm (after 3 warm-up steps each)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    transformer = arch.shapes_sd3_transformer()
    adaln_zero(transformer)
    head = repa.projector(transformer.inner_dim, REPA_CHANNELS)
    tokens = (transformer.config.sample_size // transformer.config.patch_size) ** 2
    eager = Arm(transformer.to(device), head.to(device), None, device)
    fast = Arm(copy.deepcopy(transformer), copy.deepcopy(head), args.mode, device)
    seconds, drift, first = {"eager": 0.0, "compiled": 0.0}, 0.0, None
    for i in range(args.steps + 3):
        gen = torch.Generator().manual_seed(i)
        batch = [torch.randn(args.batch, arch.LATENT_CHANNELS, 16, 16, generator=gen),
                 torch.randn(args.batch, arch.LATENT_CHANNELS, 16, 16, generator=gen),
                 torch.randn(args.batch, CONTEXT_TOKENS, 2 * arch.SD3_CLIP_WIDTH, generator=gen),
                 torch.randn(args.batch, 2 * arch.SD3_CLIP_WIDTH, generator=gen),
                 torch.rand(args.batch, 1, 1, 1, generator=gen),
                 torch.randn(args.batch, tokens, REPA_CHANNELS, generator=gen)]
        batch = [t.to(device) for t in batch]
        loss_eager, took_eager = eager.step(batch)
        loss_fast, took_fast = fast.step(batch)
        first = took_fast if first is None else first
        drift = max(drift, abs(loss_eager - loss_fast) / loss_eager)
        if i >= 3:
            seconds["eager"] += took_eager / args.steps
            seconds["compiled"] += took_fast / args.steps
    table = "\n".join([
        f"MM-DiT training step (shipped design), batch {args.batch}, {args.device}, {args.threads} threads, "
        f"{args.steps} steps per arm, torch.compile mode {args.mode!r}",
        "",
        "| arm | s/step | ratio |",
        "|---|---|---|",
        f"| eager | {seconds['eager']:.4f} | 1.00 |",
        f"| compiled | {seconds['compiled']:.4f} | {seconds['compiled'] / seconds['eager']:.2f} |",
        "",
        f"First compiled step (compiling): {first:.1f} s. Largest relative loss difference between the arms: {drift:.1e}.",
    ])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
