"""How well each VAE reconstructs held-out ShapesWorld scenes, side by side in one run.

A generated image can pass the quality gate only if the VAE can draw it, so the share of
reconstructions on which the dataset's detector still finds every object is a ceiling for the
gate of any model on that VAE. Test-split scenes (never seen in training), the posterior mean.

    python -m training.benchmarks.vae_reconstruction src/attnscope/weights/shapes-unet runs/shapes-unet/vae --n 256

Prints a Markdown table: latent shape, mean absolute error in grey levels, and the share of scenes
whose reconstruction passes (every object found with its colour and shape), by shape as well.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch


def reconstruction_scores(vae, scenes, chunk: int = 64) -> dict:
    from attnscope.datasets.detect import detect, matches_caption
    from attnscope.datasets.shapes import scene_tensor, tensor_pixels

    errors, passed, by_shape = [], [], defaultdict(list)
    with torch.no_grad():
        for start in range(0, len(scenes), chunk):
            part = scenes[start:start + chunk]
            latent = vae.encode(scene_tensor(part)).latent_dist.mean
            recon = vae.decode(latent).sample
            for scene, image in zip(part, tensor_pixels(recon)):
                errors.append(np.abs(image.astype(float) - scene.image.astype(float)).mean())
                ok = matches_caption(detect(image), scene.objects)
                passed.append(ok)
                for shape in {o.shape for o in scene.objects}:
                    by_shape[shape].append(ok)
    channels, side = latent.shape[1], latent.shape[-1]
    return {"latent": f"{side}×{side}×{channels}", "mae": float(np.mean(errors)), "pass": float(np.mean(passed)),
            "by_shape": {k: float(np.mean(v)) for k, v in sorted(by_shape.items())}}


def main(argv=None) -> None:
    from attnscope.datasets.shapes import scene_stream
    from training.train import load_vae

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vaes", nargs="+", help="VAE run folders or pipeline folders")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    scenes = list(scene_stream(args.seed, args.n, split="test"))
    rows = {folder: reconstruction_scores(load_vae(folder), scenes) for folder in args.vaes}
    shapes = sorted({s for r in rows.values() for s in r["by_shape"]})
    print(f"{args.n} test-split scenes (seed {args.seed})\n")
    print("| VAE | latent | MAE (grey levels) | all objects found | " + " | ".join(shapes) + " |")
    print("|---|---|---|---|" + "---|" * len(shapes))
    for folder, r in rows.items():
        cells = " | ".join(f"{100 * r['by_shape'][s]:.1f} %" for s in shapes)
        print(f"| {folder} | {r['latent']} | {r['mae']:.2f} | {100 * r['pass']:.1f} % | {cells} |")


if __name__ == "__main__":
    main()
