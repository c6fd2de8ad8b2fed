"""``attnscope explain``: where concepts (or a prompt's words) are in a real image.

Example:
    $ attnscope explain photo.png --concepts cat grass sky background --model black-forest-labs/FLUX.1-schnell --out runs/cat
    $ attnscope explain photo.png --prompt "a cat on the grass" --out runs/cat-daam    # DAAM word maps (any model)

The image is resized to the model's size, VAE-encoded, noised to ``--noise`` and denoised once per
``--draws`` (:func:`attnscope.realimages.trace_images`). With ``--concepts`` (SD3, SD3.5, Flux) the
folder gets ConceptAttention's segmentation, an overlay and a mask per concept; without, DAAM maps
of the prompt's words. Everything is written together or not at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..pipelines import DTYPES
from .common import CLIError, HelpFormatter
from .generate import STOPWORDS, check_device, check_output_folder, open_pipeline, settings_of


def add_explain_parser(sub) -> None:
    ex = sub.add_parser("explain", help="locate concepts (ConceptAttention) or a prompt's words (DAAM) in a real image",
                        formatter_class=HelpFormatter)
    ex.add_argument("image", type=Path, help="the image file (PNG, JPEG …)")
    ex.add_argument("--concepts", nargs="+", help="words to locate with ConceptAttention (SD3, SD3.5, Flux models; default: none, DAAM maps the --prompt)")
    ex.add_argument("--prompt", default="", help="a caption of the image (DAAM maps its words when no --concepts)")
    ex.add_argument("--model", help="shipped model name, hub id or local diffusers folder (default: the shipped shapes-unet)")
    ex.add_argument("--noise", type=float, default=0.5, help="noise level, a fraction of the noise schedule, in (0, 1)")
    ex.add_argument("--draws", type=int, default=1, help="noise draws averaged")
    ex.add_argument("--seed", type=int, default=0, help="seed of the first noise draw")
    ex.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                    help="resize the image to this (default: the model's size, else the image's own)")
    ex.add_argument("--layers", nargs="+", help="double-stream blocks ConceptAttention averages (default: all)")
    ex.add_argument("--out", default="attnscope-explain", help="output folder")
    ex.add_argument("--device", help="cpu, cuda, cuda:1, mps … (default: cuda if available)")
    ex.add_argument("--dtype", choices=DTYPES, help="default: float16 on CUDA, float32 elsewhere")
    ex.set_defaults(func=cmd_explain)


def _check(args) -> None:
    if not args.image.is_file():
        raise CLIError(f"{args.image} is not a file; give the path of an image.")
    if not 0.0 < args.noise < 1.0:
        raise CLIError(f"--noise must lie strictly between 0 and 1 (got {args.noise}).")
    if args.draws < 1:
        raise CLIError(f"--draws must be at least 1 (got {args.draws}).")
    if args.size and min(args.size) < 1:
        raise CLIError(f"--size must be positive (got {args.size[0]} {args.size[1]}).")
    if args.concepts is None and not args.prompt.strip():
        raise CLIError("Nothing to locate: give --concepts (SD3/Flux models) or a --prompt whose words DAAM maps.")
    if args.concepts is not None:
        from ..methods.concept_stream import check_concepts

        try:
            check_concepts(args.concepts)
        except ValueError as err:
            raise CLIError(str(err).replace("concepts=", "--concepts")) from None
    check_output_folder(Path(args.out))
    check_device(args.device)


def _load_image(path: Path, adapter, size, defaults: dict):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError):
        raise CLIError(f"{path} is not an image attnscope can read (PNG, JPEG …).") from None
    multiple = adapter.size_multiple()
    if size is None:
        size = (defaults["height"], defaults["width"]) if "height" in defaults and "width" in defaults else \
            (image.height - image.height % multiple, image.width - image.width % multiple)
    height, width = size
    if height < multiple or width < multiple or height % multiple or width % multiple:
        raise CLIError(f"--size {height} {width} is impossible for this model: use positive multiples of {multiple}.")
    return image.resize((width, height), Image.BICUBIC)


def cmd_explain(args: argparse.Namespace) -> int:
    from ..adapters import adapter_for
    from ..realimages import trace_images

    _check(args)
    pipe = open_pipeline(args.model, args.device, args.dtype)
    adapter = adapter_for(pipe)
    if args.concepts and not hasattr(adapter, "joint_blocks"):
        raise CLIError(f"--concepts needs an SD3, SD3.5 or Flux model (this is a {adapter.family} model); "
                       "map a caption's words with --prompt instead.")
    image = _load_image(args.image, adapter, args.size, settings_of(args.model))
    options = {"layers": []} if args.concepts else {}
    try:
        if args.concepts:
            options["concepts"] = args.concepts
        tc = trace_images(pipe, [image], args.prompt, noise=args.noise, draws=args.draws, seed=args.seed, **options)
    except ValueError as err:  # a pipeline without joint blocks, a concept the tokenizer cannot encode
        raise CLIError(str(err).replace("concepts=", "--concepts")) from None
    meta = {"seed": args.seed, "noise": args.noise, "draws": args.draws, "prompt": args.prompt, "image": str(args.image)}
    if args.concepts:
        try:
            result = tc.concept_attention(layers=args.layers, **meta)
        except ValueError as err:
            raise CLIError(str(err)) from None
        keys = result.concepts
    else:
        result = tc.daam(**meta)
        keys = [w for w in dict.fromkeys(result.words(0)) if w.casefold() not in STOPWORDS and w.isalnum()]
        if not keys:
            raise CLIError("The prompt has no words to map besides stop words; give a fuller --prompt.")
    _write(Path(args.out), image, result, keys, bool(args.concepts))
    print(f"wrote {args.out}: image.png, {len(keys)} overlay(s){', segments.png' if args.concepts else ''}, "
          "maps and record.json")
    return 0


def _write(out: Path, image, result, keys: list[str], concepts: bool) -> None:
    import numpy as np
    from PIL import Image

    from ..files import staged_folder
    from ..viz.overlay import colorize, overlay

    with staged_folder(out) as tmp:
        image.save(tmp / "image.png")
        files, coverage = ["image.png"], {}
        for key in keys:
            slug = "".join(c if c.isalnum() else "_" for c in key)
            overlay(image, result.soft(key, 0)).save(tmp / f"overlay_{slug}.png")
            mask = result.mask(key, 0)
            Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(tmp / f"mask_{slug}.png")
            coverage[key] = round(float(mask.float().mean()), 4)
            files += [f"overlay_{slug}.png", f"mask_{slug}.png"]
        if concepts:
            segments = result.segment(0).numpy()
            Image.fromarray(colorize(segments / max(1, len(keys) - 1))).save(tmp / "segments.png")
            files.append("segments.png")
        result.save(tmp / "maps")
        record = {**result.meta, "method": result.kind, "keys": keys, "mask_coverage": coverage,
                  "files": files + ["maps/"], "image_size": list(result.image_hw)}
        if concepts:
            record["segment_colors"] = {k: colorize(np.array(i / max(1, len(keys) - 1))).tolist() for i, k in enumerate(keys)}
        (tmp / "record.json").write_text(json.dumps(record, indent=1))
