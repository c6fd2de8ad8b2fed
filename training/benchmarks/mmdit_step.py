"""Cost of one MM-DiT training step with the text side encoded per step, or read from features
computed once (``train_mmdit.caption_features``, as training does), side by side in one process.

Both arms run the shipped design's transformer forward, backward and AdamW step on the same
latents, σ and captions; they differ only in how the step gets its text features. The arms
alternate, so machine noise falls on both. A real step also updates the EMA and the REPA head,
which neither arm does, so the gain of a real step is a little smaller than this ratio says.

    python -m training.benchmarks.mmdit_step --steps 40 --out training/benchmarks/results/mmdit_step.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnscope.datasets.shapes import make_scenes
from attnscope.pipelines import WEIGHTS
from training import architectures as arch
from training.train_mmdit import ZeroTokenBias, caption_features, clip_encoders_from, encode


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per arm (after 3 warm-up steps each)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--captions", type=int, default=2000, help="size of the caption bank the steps draw from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from transformers import CLIPTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = WEIGHTS / "shapes-unet"
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoders = clip_encoders_from(folder)
    captions = [scene.caption for scene in make_scenes(0, args.captions)]
    started = time.perf_counter()
    cached_context, cached_pooled = caption_features(encoders, tokenizer, captions)
    cache_seconds = time.perf_counter() - started
    transformer = arch.shapes_sd3_transformer()
    opt = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS)

    def step(index, per_step: bool) -> None:
        if per_step:
            with torch.no_grad():
                context, pooled = encode(encoders, arch.token_ids(tokenizer, [captions[i] for i in index.tolist()]))
        else:
            context, pooled = cached_context[index], cached_pooled[index]
        x0 = torch.randn(len(index), arch.LATENT_CHANNELS, 16, 16)
        sigma = torch.rand(len(index))
        with bias:
            pred = transformer(x0, encoder_hidden_states=context, pooled_projections=pooled, timestep=sigma * 1000).sample
            loss = F.mse_loss(pred, x0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds = {True: 0.0, False: 0.0}
    for i in range(args.steps + 3):
        index = torch.randint(0, len(captions), (args.batch,))
        for per_step in (True, False):
            started = time.perf_counter()
            step(index, per_step)
            if i >= 3:
                seconds[per_step] += time.perf_counter() - started
    per_step, cached = seconds[True] / args.steps, seconds[False] / args.steps
    table = "\n".join([
        f"MM-DiT training step, batch {args.batch}, {args.threads} threads, {args.steps} steps per arm",
        "",
        "| text features | s/step | ratio |",
        "|---|---|---|",
        f"| tokenised and encoded every step | {per_step:.3f} | 1.00 |",
        f"| read from `caption_features` (as training does) | {cached:.3f} | {cached / per_step:.2f} |",
        "",
        f"Computing the features once: {cache_seconds:.1f} s for {len(captions)} captions "
        f"({cache_seconds / len(captions) * 24_000:.0f} s for the 24,000-caption bank).",
    ])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
