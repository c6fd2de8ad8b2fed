"""``attnscope eval``: the segmentation benchmark from the command line.

    attnscope eval --protocol generated --n 200 --out runs/eval-gen
    attnscope eval --protocol real --noise 0.5 --n 200 --out runs/eval-real
    attnscope eval --protocol real --coco path/to/coco_folder --model my-model
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path


def add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="score attribution maps as segmentations (ShapesWorld or COCO-style data)")
    ev.add_argument("--protocol", choices=["generated", "real"], default="generated")
    ev.add_argument("--model", help="hub id or local diffusers folder (default: the shipped tiny model)")
    ev.add_argument("--methods", nargs="*", default=["daam"],
                    help="attribution methods to score; none (`--methods` alone) measures only the quality gate")
    ev.add_argument("--n", type=int, default=200, help="number of held-out scenes")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--coco", type=Path, help="COCO-style folder to read instead of generating ShapesWorld scenes")
    ev.add_argument("--steps", type=int, default=None, help="sampling steps (generated protocol)")
    ev.add_argument("--guidance", type=float, default=None)
    ev.add_argument("--noise", type=float, default=0.5, help="noise level as a fraction of the schedule (real protocol)")
    ev.add_argument("--draws", type=int, default=1, help="noise draws averaged (real protocol)")
    ev.add_argument("--batch", type=int, default=25)
    ev.add_argument("--out", type=Path, default=Path("attnscope-eval"))
    ev.add_argument("--device")
    ev.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    ev.set_defaults(func=cmd_eval)
    pair = sub.add_parser("compare", help="pair two quality gates on the same captions (exact McNemar test)")
    pair.add_argument("first", type=Path, help="`attnscope eval --out` folder of the first model")
    pair.add_argument("second", type=Path, help="the same for the second model")
    pair.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from ..cli import CLIError
    from .compare import compare_gates, load_gate

    try:
        comparison = compare_gates(load_gate(args.first), load_gate(args.second))
    except ValueError as err:
        raise CLIError(str(err)) from None
    print(comparison.summary())
    return 0


def cmd_eval(args) -> int:
    from ..cli import CLIError, _resolve_device, default_model, load_pipeline, model_defaults
    from ..datasets.coco import load_coco
    from ..datasets.shapes import make_scenes
    from .methods import available_methods
    from .report import example_grid, sample_grid, write_report
    from .runner import run_generated, run_real, summarize

    unknown = [m for m in args.methods if m not in available_methods()]
    if unknown:
        raise CLIError(f"Unknown method(s) {', '.join(unknown)}; available: {', '.join(available_methods())}")
    if not args.methods and args.protocol == "real":
        raise CLIError("The real-image protocol scores attribution maps; name at least one method (e.g. --methods daam).")
    if not 0.0 < args.noise < 1.0:
        raise CLIError(f"--noise must lie strictly between 0 and 1 (got {args.noise}).")
    if args.n < 1:
        raise CLIError(f"--n must be at least 1 (got {args.n}).")
    model = args.model or default_model()
    if model is None:
        raise CLIError("No default model ships with this build; pass --model.")
    device = _resolve_device(args.device)
    pipe = load_pipeline(model, device, args.dtype or "float32", need_adapter=bool(args.methods))
    pipe.set_progress_bar_config(disable=True)
    defaults = model_defaults(model)
    size = defaults.get("height", 64)
    if args.coco:
        try:
            scenes = load_coco(args.coco)[: args.n]
        except (ValueError, FileNotFoundError) as err:
            raise CLIError(str(err)) from None
    else:
        scenes = make_scenes(args.seed, args.n, split="test", size=size)

    def progress(done, total):
        print(f"\r{done}/{total} images", end="", file=sys.stderr, flush=True)

    start = time.time()
    header = {"title": f"attnscope eval — {args.protocol} protocol", "model": model, "n_scenes": len(scenes),
              "seed": args.seed, "methods": args.methods}
    extra, records = "", None
    if args.protocol == "generated":
        steps = args.steps or defaults.get("num_inference_steps", 20)
        guidance = args.guidance if args.guidance is not None else defaults.get("guidance_scale", 7.5)
        pairs, records, images = run_generated(pipe, scenes, args.methods, steps=steps, guidance=guidance,
                                               batch=args.batch, seed=args.seed, progress=progress)
        gate = sum(r["match"] for r in records) / len(records)
        header.update(steps=steps, guidance=guidance, quality_gate=round(gate, 4),
                      colors_exact=round(sum(r["colors_exact"] for r in records) / len(records), 4),
                      quality_by_objects=_pass_rates(records, lambda r: [r["n_objects"]]),
                      quality_by_shape=_pass_rates(records, lambda r: r["shapes"]),
                      missed_objects=missed_objects(records), drawn_instead=drawn_instead(records),
                      missed_by_size=missed_by_size(records),
                      truncated_captions=sum(r["truncated"] for r in records), scored_pairs=len(pairs))
        extra = ("Quality gate: share of generated images in which the detector finds every captioned object "
                 f"with the right colour and shape: **{gate:.1%}** of {len(records)}.")
        sample_grid(images, records, args.out / "samples.png")
    else:
        pairs, images = run_real(pipe, scenes, args.methods, noise=args.noise, draws=args.draws,
                                 batch=args.batch, seed=args.seed, progress=progress)
        header.update(noise=args.noise, draws=args.draws, scored_pairs=len(pairs))
    print(file=sys.stderr)
    table = summarize(pairs, args.methods, seed=args.seed) if args.methods else {}
    header["seconds"] = round(time.time() - start, 1)
    write_report(args.out, header, table, extra, per_image=records)
    for method in args.methods:
        example_grid(pairs, images, method, args.out / f"examples_{method}.png")
    print((args.out / "results.md").read_text())
    return 0


def _pass_rates(records: list, groups_of) -> dict:
    """Share of passing images in each group; ``groups_of(record)`` lists the groups a record is in
    (its object count; every shape its caption names)."""
    groups: dict = {}
    for record in records:
        for key in groups_of(record):
            groups.setdefault(key, []).append(record["match"])
    return {str(key): round(sum(passed) / len(passed), 4) for key, passed in sorted(groups.items())}


def missed_objects(records: list) -> dict:
    """Why captioned objects went unfound, counted per object and by its shape: ``colour absent`` (no
    detection has its colour) or ``other shape`` (some detection has its colour — possibly one matched
    to another object of that colour — but none with its colour and shape).

        missed_objects([{"missing": ["red cross"], "found": ["red star"]}])
        # {'colour absent': {}, 'other shape': {'cross': 1}}
    """
    kinds: dict = {"colour absent": {}, "other shape": {}}
    for record in records:
        colours = {item.split()[0] for item in record["found"]}
        for item in record["missing"]:
            colour, shape = item.split()
            counts = kinds["other shape" if colour in colours else "colour absent"]
            counts[shape] = counts.get(shape, 0) + 1
    return {kind: dict(sorted(counts.items())) for kind, counts in kinds.items()}


def drawn_instead(records: list) -> dict:
    """For each captioned object found in its colour but not its shape, the shapes the detector saw in
    that colour, counted as ``{captioned shape: {detected shape: count}}`` (a confusion table of the misses).

        drawn_instead([{"missing": ["red cross"], "found": ["red star", "blue circle"]}])
        # {'cross': {'star': 1}}
    """
    table: dict = {}
    for record in records:
        for item in record["missing"]:
            colour, shape = item.split()
            for detected in record["found"]:
                found_colour, found_shape = detected.split()
                if found_colour == colour and found_shape != shape:
                    row = table.setdefault(shape, {})
                    row[found_shape] = row.get(found_shape, 0) + 1
    return {shape: dict(sorted(row.items())) for shape, row in sorted(table.items())}


def missed_by_size(records: list) -> dict:
    """Share of captioned objects the detector did not find, by the object's drawn size (whether or not
    the caption says it): tells whether misses are a matter of resolution.

        missed_by_size([{"sizes": ["small", "large"], "missing_sizes": ["small"]}])
        # {'large': 0.0, 'small': 1.0}
    """
    total = Counter(size for record in records for size in record["sizes"])
    missed = Counter(size for record in records for size in record["missing_sizes"])
    return {str(size): round(missed[size] / total[size], 4) for size in sorted(total, key=str)}
