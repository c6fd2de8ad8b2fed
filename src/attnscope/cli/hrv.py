"""``attnscope hrv build|show|merge``: head relevance vectors from the command line.

Example:
    $ attnscope hrv build --n 500 --out runs/hrv-shapes                       # the shipped shapes-unet
    $ attnscope hrv build --model CompVis/stable-diffusion-v1-4 --prompts prompts.txt --steps 50 \\
          --shard 0/4 --checkpoint runs/hrv-part0 --out runs/hrv-part0
    $ attnscope hrv merge runs/hrv-part0 runs/hrv-part1 runs/hrv-part2 runs/hrv-part3 --out runs/hrv-sd14
    $ attnscope hrv show runs/hrv-sd14 --top 8 --plot runs/hrv-sd14.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..pipelines import DTYPES
from .common import CLIError, HelpFormatter

CONCEPT_SETS = ("shapes", "default")
#: ShapesWorld training captions used when no --prompts file and no --n are given.
SHAPES_PROMPTS = 200


def _shard(text: str | None):
    if text is None:
        return None
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        raise CLIError(f"--shard {text!r} is not I/N (e.g. 0/4 for the first of four shards).") from None
    if parts < 1 or not 0 <= part < parts:
        raise CLIError(f"--shard {text}: I must lie in 0..N-1 (e.g. 0/4 … 3/4).")
    return part, parts


def _concepts(choice: str | None, shipped: bool) -> dict:
    from ..hrv.concepts import DEFAULT_CONCEPTS, shapes_concepts

    choice = choice or ("shapes" if shipped else "default")
    if choice == "shapes":
        return shapes_concepts()
    if choice == "default":
        return DEFAULT_CONCEPTS
    path = Path(choice)
    if not path.is_file():
        raise CLIError(f"--concepts {choice}: use one of {CONCEPT_SETS} or a JSON file of {{concept: [words]}}.")
    try:
        concepts = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CLIError(f"--concepts {path} is not valid JSON ({err}); write {{\"concept\": [\"word\", ...]}}.") from None
    if not isinstance(concepts, dict) or not all(isinstance(v, list) for v in concepts.values()):
        raise CLIError(f"--concepts {path} must hold {{concept: [words]}}.")
    return concepts


def _prompts(args, shipped: bool) -> list[str]:
    if args.prompts is None:
        if not shipped:
            raise CLIError("--prompts FILE (one prompt per line) is needed for models other than the shipped ones.")
        from ..datasets.shapes import make_scenes

        return [s.caption for s in make_scenes(args.seed, args.n or SHAPES_PROMPTS, split="train")]
    path = Path(args.prompts)
    if not path.is_file():
        raise CLIError(f"--prompts {path} does not exist; give a text file with one prompt per line.")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"--prompts {path} holds no prompt; write one prompt per line.")
    return prompts[: args.n] if args.n else prompts


def cmd_build(args: argparse.Namespace) -> int:
    from ..hrv.construct import build
    from ..pipelines import shipped_models
    from .generate import check_device, check_output_folder, open_pipeline, settings_of

    for name in ("n", "steps", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name} must be at least 1 (got {value}).")
    if args.clamp is not None and args.clamp <= 0:
        raise CLIError(f"--clamp must be positive (got {args.clamp}).")
    shard = _shard(args.shard)
    shipped = args.model is None or args.model in shipped_models()
    concepts, prompts = _concepts(args.concepts, shipped), _prompts(args, shipped)
    check_output_folder(Path(args.out))
    check_device(args.device)
    defaults = settings_of(args.model)
    steps = args.steps or defaults.get("num_inference_steps", 50)
    guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale", 7.5)
    pipe = open_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    report = lambda done, total: print(f"\r{done}/{total} prompts", end="", file=sys.stderr)  # noqa: E731
    try:
        hrv = build(pipe, concepts, prompts, seed=args.seed, batch=args.batch, shard=shard, checkpoint=args.checkpoint,
                    clamp=args.clamp, progress=report, num_inference_steps=steps, guidance_scale=guidance)
    except (ValueError, KeyError) as err:
        raise CLIError(str(err).strip("'\"")) from None
    print(file=sys.stderr)
    hrv.save(args.out)
    print(f"wrote {args.out}: {len(hrv.concepts)} concepts × {hrv.n_heads} heads from {len(hrv.meta['done'])} prompts")
    print(hrv.summary(args.top))
    return 0


def _load(path: str):
    from ..hrv.vectors import load_relevance
    from ..io import ResultFileError

    try:
        return load_relevance(path)
    except ResultFileError as err:
        raise CLIError(str(err)) from None


def cmd_show(args: argparse.Namespace) -> int:
    hrv = _load(args.path)
    if args.concept is not None and args.concept not in hrv.concepts:
        raise CLIError(f"--concept {args.concept!r} is unknown; this HRV has: {', '.join(hrv.concepts)}")
    plot = None if args.plot is None else Path(args.plot)
    if plot is not None and plot.suffix.lower() != ".png":
        raise CLIError(f"--plot {plot} must name a .png file.")
    if plot is not None and not plot.parent.is_dir():
        raise CLIError(f"--plot {plot}: folder {plot.parent} does not exist; create it first.")
    source = hrv.meta.get("source") or hrv.meta.get("model", "?")
    print(f"{args.path}: {hrv.matrix.shape[0]} concepts × {hrv.n_heads} heads ({source})")
    print(hrv.summary(args.top, concepts=None if args.concept is None else [args.concept]))
    if plot is not None:
        hrv.plot(concepts=None if args.concept is None else [args.concept]).save(plot)
        print(f"wrote {plot}: concepts × heads heat map")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..hrv.construct import merge
    from .generate import check_output_folder

    check_output_folder(Path(args.out))
    try:
        merged = merge([_load(p) for p in args.parts])
    except ValueError as err:
        raise CLIError(str(err)) from None
    merged.save(args.out)
    print(f"wrote {args.out}: {len(args.parts)} shards, {len(merged.meta['done'])} prompts")
    return 0


def add_hrv_parser(sub) -> None:
    top = sub.add_parser("hrv", help="build, merge and show head relevance vectors", formatter_class=HelpFormatter)
    inner = top.add_subparsers(dest="hrv_command", required=True)
    build = inner.add_parser("build", help="build head relevance vectors by generating from prompts",
                             formatter_class=HelpFormatter)
    build.add_argument("--model", help="shipped model name, hub id or local diffusers folder (default: shapes-unet)")
    build.add_argument("--concepts", help=f"{' or '.join(CONCEPT_SETS)}, or a JSON file of {{concept: [words]}} "
                                          "(default: shapes for the shipped models, else default)")
    build.add_argument("--prompts", help="text file, one prompt per line (default for shipped models: ShapesWorld "
                                         "training captions)")
    build.add_argument("--n", type=int, help=f"number of prompts: the file's first N (default: all), or N ShapesWorld "
                                             f"captions (default: {SHAPES_PROMPTS})")
    build.add_argument("--steps", type=int, help="denoising steps (default: the model's recommendation, else 50)")
    build.add_argument("--guidance", type=float, help="guidance scale (default: the model's recommendation, else 7.5)")
    build.add_argument("--seed", type=int, default=0, help="prompt i uses noise seed SEED + i")
    build.add_argument("--batch", type=int, default=1, help="prompts per pipeline call")
    build.add_argument("--shard", help="I/N: build only prompts I, I+N, … (merge the shards with `hrv merge`; default: every prompt)")
    build.add_argument("--checkpoint", help="folder to save progress to and resume from (default: none)")
    build.add_argument("--clamp", type=float, help="clamp weights at this value in edits (the paper: 9 for SDXL; default: no clamp)")
    build.add_argument("--top", type=int, default=5, help="heads per concept in the printed summary")
    build.add_argument("--out", required=True, help="output folder (required, no default)")
    build.add_argument("--device", help="cpu, cuda, cuda:1, mps … (default: cuda if available)")
    build.add_argument("--dtype", choices=DTYPES, help="default: float16 on CUDA, float32 elsewhere")
    build.set_defaults(func=cmd_build)
    show = inner.add_parser("show", help="print each concept's most relevant heads", formatter_class=HelpFormatter)
    show.add_argument("path", help="a saved HRV folder")
    show.add_argument("--top", type=int, default=8, help="heads per concept")
    show.add_argument("--concept", help="show only this concept (default: every concept)")
    show.add_argument("--plot", help="also write the concepts × heads heat map to this .png (default: none)")
    show.set_defaults(func=cmd_show)
    merge = inner.add_parser("merge", help="add up HRV shards built with --shard", formatter_class=HelpFormatter)
    merge.add_argument("parts", nargs="+", help="saved HRV shard folders")
    merge.add_argument("--out", required=True, help="output folder (required, no default)")
    merge.set_defaults(func=cmd_merge)
