"""The ``attnscope`` command line.

Example:
    $ attnscope generate "a red circle left of a blue square" --out runs/demo
    $ attnscope generate "a cat with a hat" --model stabilityai/stable-diffusion-2-1-base --words cat hat
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

#: Words left out of the default word list (``--words`` overrides it).
STOPWORDS = frozenset("a an the of and or to in on at with by for from is are".split())
DTYPES = ("float32", "float16", "bfloat16")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def default_model() -> str | None:
    """The tiny model shipped inside the package, if this build has one."""
    from .models import default_model_dir

    path = default_model_dir()
    return str(path) if path is not None else None


def model_defaults(model: str) -> dict:
    """Sampling settings a model folder recommends (``attnscope_defaults.json``), if any."""
    path = Path(model).expanduser() / "attnscope_defaults.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def absent_components(folder: Path) -> dict:
    """Components a local folder saved as absent (``[null, null]`` in ``model_index.json``).

    diffusers refuses to load such a folder unless each absent component is passed as ``None``
    (e.g. SD3 without its T5 encoder: ``text_encoder_3=None, tokenizer_3=None``).
    """
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {name: None for name, spec in index.items() if not name.startswith("_") and spec == [None, None]}


def load_pipeline(model: str, device: str, dtype: str, need_adapter: bool = True):
    """``DiffusionPipeline.from_pretrained`` with one-line errors for missing or unsupported models.

    ``need_adapter=False`` also accepts pipelines that attnscope cannot trace yet (for generation only).
    """
    import torch
    from diffusers import DiffusionPipeline

    from .adapters import UnsupportedPipelineError, adapter_for

    local = Path(model).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise CLIError(f"{local} is not a diffusers pipeline folder (no model_index.json); pass a hub id or a saved pipeline.")
    looks_local = local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not local.exists():
        raise CLIError(f"Model folder {local} does not exist.")
    _quiet_libraries()
    try:
        extra = absent_components(local) if local.exists() else {}
        pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else model, dtype=getattr(torch, dtype), **extra)
    except Exception as err:  # hub, network and format errors all end here
        where = "the folder is incomplete or corrupt" if local.exists() else "it is not cached and the hub could not provide it"
        raise CLIError(f"Could not load model {model!r} ({where}: {type(err).__name__}); "
                       "--model takes a hub id or a local diffusers folder.") from None
    if need_adapter:
        try:
            adapter_for(pipe)
        except UnsupportedPipelineError as err:
            raise CLIError(str(err)) from None
    return pipe.to(device)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers chatter (deprecations, loading bars) off the terminal."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import attnscope

    model = args.model or default_model()
    if model is None:
        raise CLIError("No default model ships with this build; pass --model HUB_ID_OR_FOLDER.")
    defaults = model_defaults(model)
    args.steps = args.steps if args.steps is not None else defaults.get("num_inference_steps", 20)
    args.guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale", 7.5)
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1 (got {args.steps}).")
    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1] (got {args.threshold}).")
    device = _resolve_device(args.device)
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    pipe = load_pipeline(model, device, dtype)
    size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    for name, value in size.items():
        if value <= 0 or value % scale:
            raise CLIError(f"--{name} {value} is impossible for this model: use a positive multiple of {scale}.")

    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    with attnscope.trace(pipe) as tc:
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

    from .viz.overlay import overlay

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnscope", description="See what each word of a prompt does inside a diffusion model.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate an image and DAAM heat maps for its words")
    gen.add_argument("prompt")
    gen.add_argument("--model", help="hub id or local diffusers folder (default: the shipped tiny ShapesWorld model)")
    gen.add_argument("--steps", type=int, help="default: the model's recommendation, else 20")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--guidance", type=float, help="default: the model's recommendation, else 7.5")
    gen.add_argument("--height", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--words", nargs="+", help="words to map (default: every word but stop words)")
    gen.add_argument("--threshold", type=float, default=0.4, help="τ for binary masks (paper: 0.4 of the max)")
    gen.add_argument("--out", default="attnscope-out")
    gen.add_argument("--device", help="cpu, cuda, cuda:1, mps … (default: cuda if available)")
    gen.add_argument("--dtype", choices=DTYPES, help="default: float16 on CUDA, float32 elsewhere")
    gen.set_defaults(func=cmd_generate)
    from .eval.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"attnscope: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
