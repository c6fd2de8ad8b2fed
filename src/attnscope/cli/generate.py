"""``attnscope generate``: one image and its DAAM word maps, overlays and masks.

Example:
    $ attnscope generate "a red circle left of a blue square" --out runs/demo
    $ attnscope generate "a cat with a hat" --model stabilityai/stable-diffusion-2-1-base --words cat hat
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..methods.base import DEFAULT_THRESHOLD
from ..pipelines import DTYPES
from .errors import CLIError

#: Words left out of the default word list (``--words`` overrides it).
STOPWORDS = frozenset("a an the of and or to in on at with by for from is are".split())


def open_pipeline(model: str | None, device: str | None, dtype: str | None, require_adapter: bool = True):
    """Load a pipeline for a command; loading errors become one-line CLI errors."""
    from ..adapters import UnsupportedPipelineError
    from ..pipelines import ModelLoadError, load_pipeline

    try:
        return load_pipeline(model, device=device, dtype=dtype, require_adapter=require_adapter)
    except (ModelLoadError, UnsupportedPipelineError) as err:
        raise CLIError(str(err)) from None


def settings_of(model: str | None) -> dict:
    """The model's recommended sampling settings; an unreadable file is a CLI error."""
    from ..pipelines import ModelLoadError, model_defaults

    try:
        return model_defaults(model)
    except ModelLoadError as err:
        raise CLIError(str(err)) from None


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..core.trace import trace

    defaults = settings_of(args.model)
    args.steps = args.steps if args.steps is not None else defaults.get("num_inference_steps", 20)
    args.guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale", 7.5)
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1 (got {args.steps}).")
    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1] (got {args.threshold}).")
    pipe = open_pipeline(args.model, args.device, args.dtype)
    size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    for name, value in size.items():
        if value <= 0 or value % scale:
            raise CLIError(f"--{name} {value} is impossible for this model: use a positive multiple of {scale}.")

    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    with trace(pipe) as tc:
        out = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generator, **size)
    heat = tc.daam(seed=args.seed, guidance_scale=args.guidance, steps=args.steps, prompt=args.prompt)
    words = args.words or list(dict.fromkeys(w for w in heat.words() if w.casefold() not in STOPWORDS and w.isalnum()))
    unknown = [w for w in words if w.casefold() not in {x.casefold() for x in heat.words()}]
    if unknown:
        raise CLIError(f"{', '.join(unknown)} not in the prompt; its words are: {' '.join(heat.words())}")
    write_outputs(Path(args.out), heat, out.images[0], words, args.threshold)
    print(f"wrote {args.out}: image.png, {len(words)} overlay(s), maps and record.json")
    return 0


def write_outputs(out: Path, heat, image, words: list[str], threshold: float) -> None:
    """Write image, overlays, masks, maps and a JSON record; all files appear together or not at all."""
    from PIL import Image

    from ..viz.overlay import overlay

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".attnscope-", dir=out))
    try:
        image.save(staging / "image.png")
        files, coverage = ["image.png"], {}
        for word in words:
            slug = "".join(c if c.isalnum() else "_" for c in word)
            overlay(image, heat.word(word)).save(staging / f"overlay_{slug}.png")
            mask = heat.word(word, threshold=threshold)
            Image.fromarray(mask.numpy().astype("uint8") * 255).save(staging / f"mask_{slug}.png")
            coverage[word] = round(float(mask.float().mean()), 4)
            files += [f"overlay_{slug}.png", f"mask_{slug}.png"]
        heat.save(staging / "maps")
        record = {**heat.meta, "words": words, "threshold": threshold, "mask_coverage": coverage,
                  "files": files + ["maps/"], "image_size": list(heat.image_hw)}
        (staging / "record.json").write_text(json.dumps(record, indent=1))
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_generate_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate an image and DAAM heat maps for its words",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("prompt", help="the text prompt")
    gen.add_argument("--model", help="shipped model name, hub id or local diffusers folder (default: the shipped shapes-unet)")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation, else 20)")
    gen.add_argument("--seed", type=int, default=0, help="random seed of the initial noise")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's recommendation, else 7.5)")
    gen.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    gen.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    gen.add_argument("--words", nargs="+", help="words or phrases to map (default: every word but stop words)")
    gen.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="τ for binary masks: D >= τ·max D")
    gen.add_argument("--out", default="attnscope-out", help="output folder")
    gen.add_argument("--device", help="cpu, cuda, cuda:1, mps … (default: cuda if available)")
    gen.add_argument("--dtype", choices=DTYPES, help="default: float16 on CUDA, float32 elsewhere")
    gen.set_defaults(func=cmd_generate)
