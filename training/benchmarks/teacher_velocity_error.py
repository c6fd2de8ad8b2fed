"""How close the UNet teacher's velocity and an MM-DiT's prediction come to the flow target, per noise level σ.

Both models see the same bank scenes, noise and captions; each column is the mean squared error
against the data target ``ε − x_0``, so it includes the target's own irreducible variance and only
differences between columns matter. A lower teacher column is where distilling from it helps
(``attnscope/models/distill.py`` uses the teacher only inside ``SIGMA_WINDOW``).

    python benchmarks/teacher_velocity_error.py --bank-from runs/mmdit7 --out benchmarks/results/teacher_velocity_error.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnscope.pipelines import WEIGHTS
from training import architectures as arch
from training import train_mmdit
from training.distill import FlowTeacher

SIGMAS = (0.05, 0.1, 0.15, 0.2, 0.4, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank-from", type=Path, required=True, help="run folder holding bank.safetensors and bank.json")
    parser.add_argument("--student", type=Path, default=WEIGHTS / "shapes-mmdit")
    parser.add_argument("--teacher", type=Path, default=WEIGHTS / "shapes-unet")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    torch.set_num_threads(2)
    bank = load_file(str(args.bank_from / "bank.safetensors"))["latents"].float()
    captions = json.loads((args.bank_from / "bank.json").read_text())
    tokenizer = CLIPTokenizer.from_pretrained(args.student / "tokenizer")
    teacher = FlowTeacher(args.teacher, tokenizer, window=(0.0, 1.0))
    student = SD3Transformer2DModel.from_pretrained(args.student / "transformer", torch_dtype=torch.float32).eval()
    encoders = train_mmdit.exported_encoders(args.student)
    gen = torch.Generator().manual_seed(args.seed)
    index = torch.randint(0, len(captions), (args.n,), generator=gen)
    x0 = bank[index]
    noise = torch.randn(x0.shape, generator=gen)
    ids = arch.token_ids(tokenizer, [captions[i] for i in index.tolist()])
    with torch.no_grad(), train_mmdit.ZeroTokenBias(arch.SD3_ZERO_TOKENS):
        context, pooled = train_mmdit.encode(encoders, ids)
    rows = ["| σ | teacher (UNet) | student (MM-DiT) | teacher − student | teacher in schedule |", "|---|---|---|---|---|"]
    for level in SIGMAS:
        sigma = torch.full((args.n, 1, 1, 1), level)
        noisy = (1 - sigma) * x0 + sigma * noise
        velocity, in_schedule = teacher.velocity(noisy, sigma, ids)
        with torch.no_grad(), train_mmdit.ZeroTokenBias(arch.SD3_ZERO_TOKENS):
            pred = student(noisy, encoder_hidden_states=context, pooled_projections=pooled, timestep=sigma.flatten() * 1000).sample
        target = noise - x0
        t_err, s_err = float(((velocity - target) ** 2).mean()), float(((pred - target) ** 2).mean())
        rows.append(f"| {level} | {t_err:.4f} | {s_err:.4f} | {t_err - s_err:+.4f} | {bool(in_schedule.all())} |")
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Mean squared error against ε − x₀ on {args.n} bank scenes (seed {args.seed}); "
                            f"teacher {args.teacher.name}, student {args.student.name}.\n\n{table}\n")


if __name__ == "__main__":
    main()
