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
from .common import CLIError, HelpFormatter
from .steering import add_steering_options, check_steering, steering_for

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


def check_options(args: argparse.Namespace) -> None:
    """Everything that can be checked before a model is loaded."""
    if not args.prompt.strip():
        raise CLIError("The prompt is empty; give a prompt, e.g. attnscope generate \"a red circle\".")
    for name in ("steps", "height", "width"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name} must be at least 1 (got {value}).")
    if args.guidance is not None and args.guidance < 0:
        raise CLIError(f"--guidance must not be negative (got {args.guidance}).")
    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1] (got {args.threshold}).")
    if args.words is not None and any(not w.strip() for w in args.words):
        raise CLIError("--words got an empty word; give words or phrases of the prompt.")
    check_output_folder(Path(args.out))
    check_device(args.device)


def check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is an existing file; give a folder path.")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CLIError(f"--out {out} cannot be created ({parent} is not a writable folder); choose another path.")


def check_device(device: str | None) -> None:
    from ..pipelines import ModelLoadError, resolve_device

    try:
        resolve_device(device)
    except ModelLoadError as err:
        raise CLIError(str(err)) from None


def check_size(pipe, adapter, height: int | None, width: int | None) -> dict:
    multiple = adapter.size_multiple()
    size = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    for name, value in size.items():
        if value % multiple:
            below, above = value - value % multiple, value - value % multiple + multiple
            hint = f"{below} or {above}" if below else f"{above}"
            raise CLIError(f"--{name} {value} is impossible for this model: use a positive multiple of "
                           f"{multiple} (e.g. {hint}).")
    return size


def choose_words(requested: list[str] | None, kept: list, cut: list, context: int) -> list[str]:
    """The words to map, each checked against the prompt's words the model reads (phrases allowed)."""
    from ..core.tokens import find_word

    if requested is None:
        chosen = [w.text for w in kept if w.text.casefold() not in STOPWORDS and w.text.isalnum()]
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            raise CLIError("The prompt has no words to map besides stop words; name some with --words.")
        return chosen
    for word in requested:
        try:
            find_word(kept, word)
        except KeyError:
            if _found(kept + cut, word):
                raise CLIError(f"{word!r} was cut: the prompt is longer than the model's {context}-token context; "
                               "shorten the prompt.") from None
            listed = " ".join(w.text for w in kept)
            raise CLIError(f"{word!r} is not in the prompt; its words are: {listed}") from None
    return list(requested)


def _found(words: list, query: str) -> bool:
    from ..core.tokens import find_word

    try:
        return bool(find_word(words, query))
    except KeyError:
        return False


def cmd_generate(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..adapters import adapter_for
    from ..core.trace import trace

    check_options(args)
    check_steering(args)
    defaults = settings_of(args.model)
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps", 20)
    guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale", 7.5)
    pipe = open_pipeline(args.model, args.device, args.dtype)
    adapter = adapter_for(pipe)
    size = check_size(pipe, adapter, args.height, args.width)
    kept, cut = adapter.prompt_words(args.prompt)
    context = adapter.context_length()
    words = choose_words(args.words, kept, cut, context)
    if cut:
        print(f"attnscope: note: the prompt is longer than the model's {context}-token context; cut: "
              f"{' '.join(w.text for w in cut)}", file=sys.stderr)

    steering, steered = steering_for(args, pipe, kept)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    with trace(pipe) as tc, steering:
        out = pipe(args.prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, **size)
    heat = tc.daam(seed=args.seed, guidance_scale=guidance, steps=steps, prompt=args.prompt, **steered)
    write_outputs(Path(args.out), heat, out.images[0], words, args.threshold)
    print(f"wrote {args.out}: image.png, {len(words)} overlay(s), maps and record.json")
    return 0


def _slug(word: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in word)


def write_outputs(out: Path, heat, image, words: list[str], threshold: float) -> None:
    """Write image, overlays, masks, maps and a JSON record; all files appear together or not at all.

    A new folder is staged beside ``out`` and renamed into place; into an existing folder the files
    are staged inside it and moved in at the end. Either way an error or Ctrl-C leaves nothing new.
    """
    from PIL import Image

    from ..viz.overlay import overlay

    fresh = not out.exists()
    where = out.parent if fresh else out
    where.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".attnscope-", dir=where))
    try:
        image.save(staging / "image.png")
        files, coverage = ["image.png"], {}
        for word in words:
            slug = _slug(word)
            overlay(image, heat.word(word)).save(staging / f"overlay_{slug}.png")
            mask = heat.word(word, threshold=threshold)
            Image.fromarray(mask.numpy().astype("uint8") * 255).save(staging / f"mask_{slug}.png")
            coverage[word] = round(float(mask.float().mean()), 4)
            files += [f"overlay_{slug}.png", f"mask_{slug}.png"]
        heat.save(staging / "maps")
        record = {**heat.meta, "words": words, "threshold": threshold, "mask_coverage": coverage,
                  "files": files + ["maps/"], "image_size": list(heat.image_hw)}
        (staging / "record.json").write_text(json.dumps(record, indent=1))
        if fresh:
            os.replace(staging, out)
            return
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_generate_parser(sub) -> None:
    gen = sub.add_parser("generate", help="generate an image and DAAM heat maps for its words",
                         formatter_class=HelpFormatter)
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
    add_steering_options(gen)
    gen.set_defaults(func=cmd_generate)
