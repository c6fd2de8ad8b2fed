"""Does the MM-DiT memorise its latent bank? Flow loss on bank scenes against unseen scenes.

The MM-DiT trains about 13 epochs over a fixed bank of 24,000 pre-encoded scenes. If it fits those
scenes better than new ones, a larger bank (minutes of encoding) would buy more than the same
minutes of steps. This script scores each model on three sets of the same size, with the same
noise and the same σ for the i-th scene of every set, through the stock pipeline's prompt encoding:

- ``bank``: the first scenes of a run's latent bank (trained on);
- ``fresh``: new training-split scenes (the bank's generator, past its end);
- ``test``: test-split scenes (held-out captions, as the quality gate draws them).

    python -m training.benchmarks.mmdit_generalization src/attnscope/weights/shapes-mmdit --bank-from runs/shapes-mmdit/mmdit --n 512

Prints a Markdown table of the flow loss ``‖v̂ − (ε − x₀)‖²`` per set and σ band.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.errors import TrainingError, run_command

SIGMAS = (0.2, 0.4, 0.6, 0.8)  # the bands of the hybrid-sampling benchmark's table


def set_latents(vae, bank_folder: Path, n: int, seed: int) -> dict:
    """``{name: (latents, captions)}`` for the bank, fresh and test sets (n scenes each)."""
    from safetensors.torch import load_file

    from attnscope.datasets.shapes import scene_stream, scene_tensor
    from training.train import BANK_CHUNK as chunk, scene_batch

    bank = load_file(str(bank_folder / "bank.safetensors"))["latents"].float()
    captions = json.loads((bank_folder / "bank.json").read_text())
    if n > len(captions):
        raise TrainingError(f"--n {n} is larger than the bank in {bank_folder} ({len(captions)} scenes); pass a smaller --n.")

    def encode(images):
        with torch.no_grad():  # rounded through float16 as the bank is stored
            return (vae.encode(images).latent_dist.mean * vae.config.scaling_factor).half().float()

    first_unseen = -(-len(captions) // chunk)  # the bank used chunks 0 .. first_unseen - 1
    fresh, fresh_captions = [], []
    for index in range(-(-n // chunk)):
        images, caps = scene_batch(seed + 1_000_000, first_unseen + index, chunk)
        fresh.append(encode(images))
        fresh_captions += caps
    test_scenes = list(scene_stream(seed, n, split="test"))
    test = torch.cat([encode(scene_tensor(test_scenes[i:i + chunk])) for i in range(0, n, chunk)])
    return {"bank": (bank[:n], captions[:n]), "fresh": (torch.cat(fresh)[:n], fresh_captions[:n]),
            "test": (test, [s.caption for s in test_scenes])}


@torch.no_grad()
def flow_losses(pipe, latents, captions, noise, chunk: int = 64) -> dict:
    """Mean flow loss per σ in SIGMAS (each scene at every σ, the same noise)."""
    totals = dict.fromkeys(SIGMAS, 0.0)
    for i in range(0, len(captions), chunk):
        x0, eps = latents[i:i + chunk], noise[i:i + chunk]
        context, _, pooled, _ = pipe.encode_prompt(captions[i:i + chunk], None, None, do_classifier_free_guidance=False)
        for sigma in SIGMAS:  # the prompt is encoded once for every σ
            noisy = (1 - sigma) * x0 + sigma * eps
            timestep = torch.full((len(x0),), sigma * 1000.0)
            pred = pipe.transformer(noisy, encoder_hidden_states=context, pooled_projections=pooled, timestep=timestep).sample
            totals[sigma] += ((pred.float() - (eps - x0)) ** 2).mean(dim=(1, 2, 3)).sum().item()
    return {sigma: total / len(captions) for sigma, total in totals.items()}


def run(argv=None) -> None:
    from diffusers import DiffusionPipeline

    from attnscope.pipelines import absent_components

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="SD3 pipeline folders (exported MM-DiTs)")
    parser.add_argument("--bank-from", type=Path, required=True, help="run folder holding the bank the models trained on")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="the training runs' --seed (the bank's generator)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = {}
    sets = None
    for folder in args.models:
        pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, **absent_components(folder))
        if sets is None:  # every model of a comparison draws through the same VAE (checked by the export)
            sets = set_latents(pipe.vae, args.bank_from, args.n, args.seed)
            noise = torch.randn(sets["bank"][0].shape, generator=torch.Generator().manual_seed(args.seed))
        rows[folder] = {name: flow_losses(pipe, latents, captions, noise) for name, (latents, captions) in sets.items()}
    print(f"{args.n} scenes per set, σ in {SIGMAS}, the same noise for scene i of every set\n")
    print("| model | set | " + " | ".join(f"σ {s}" for s in SIGMAS) + " | mean | against bank |")
    print("|---|---|" + "---|" * (len(SIGMAS) + 2))
    for folder, by_set in rows.items():
        bank_mean = sum(by_set["bank"].values()) / len(SIGMAS)
        for name, losses in by_set.items():
            mean = sum(losses.values()) / len(SIGMAS)
            cells = " | ".join(f"{losses[s]:.4f}" for s in SIGMAS)
            print(f"| {folder} | {name} | {cells} | {mean:.4f} | {100 * (mean / bank_mean - 1):+.1f} % |")


def main(argv=None) -> None:
    run_command(run, None, argv)


if __name__ == "__main__":
    main()
