"""``attnscope eval``: the segmentation benchmark from the command line.

    attnscope eval --protocol generated --n 200 --out runs/eval-gen
    attnscope eval --protocol real --noise 0.5 --n 200 --out runs/eval-real
    attnscope eval --protocol real --coco path/to/coco_folder --model my-model
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..pipelines import DEFAULT_MODEL, DTYPES
from .common import CLIError, HelpFormatter
from .generate import check_device, check_output_folder, open_pipeline, settings_of


def add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="score attribution maps as segmentations (ShapesWorld or COCO-style data)",
                        formatter_class=HelpFormatter)
    ev.add_argument("--protocol", choices=["generated", "real"], default="generated",
                    help="generated: score maps on images generated from held-out captions; "
                         "real: on dataset images noised to --noise")
    ev.add_argument("--model", help="shipped model name, hub id or local diffusers folder (default: the shipped shapes-unet)")
    ev.add_argument("--methods", nargs="*", default=["daam"],
                    help="attribution methods to score; none (`--methods` alone) measures only the quality gate")
    ev.add_argument("--n", type=int, default=200, help="number of held-out scenes")
    ev.add_argument("--seed", type=int, default=0, help="seed of the held-out scenes and of the generation noise")
    ev.add_argument("--coco", type=Path, help="COCO-style folder to read (default: generate ShapesWorld scenes)")
    ev.add_argument("--steps", type=int, default=None,
                    help="sampling steps, generated protocol (default: the model's recommendation, else 20)")
    ev.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance scale (default: the model's recommendation, else 7.5)")
    ev.add_argument("--noise", type=float, default=0.5, help="noise level as a fraction of the schedule (real protocol)")
    ev.add_argument("--draws", type=int, default=1, help="noise draws averaged (real protocol)")
    ev.add_argument("--batch", type=int, default=25, help="images per pipeline call")
    ev.add_argument("--per-head", action="store_true",
                    help="also score every attention head's own DAAM map, by word kind (the spread across heads)")
    ev.add_argument("--out", type=Path, default=Path("attnscope-eval"), help="folder for results.json, results.md and figures")
    ev.add_argument("--device", help="cpu, cuda, cuda:1, mps … (default: cuda if available)")
    ev.add_argument("--dtype", choices=DTYPES, help="default: float32 (the benchmark's reference precision)")
    ev.set_defaults(func=cmd_eval)


def add_compare_parser(sub) -> None:
    pair = sub.add_parser("compare", help="pair two quality gates on the same captions (exact McNemar test)")
    pair.add_argument("first", type=Path, help="`attnscope eval --out` folder of the first model")
    pair.add_argument("second", type=Path, help="the same for the second model")
    pair.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from ..eval.compare import compare_gates, load_gate

    try:
        comparison = compare_gates(load_gate(args.first), load_gate(args.second))
    except ValueError as err:
        raise CLIError(str(err)) from None
    print(comparison.summary())
    return 0


def cmd_eval(args) -> int:
    from ..datasets.coco import load_coco
    from ..datasets.shapes import make_scenes
    from ..eval.heads import heads_markdown, summarize_heads
    from ..eval.gate import drawn_instead, missed_by_size, missed_objects, pass_rates
    from ..eval.report import example_grid, sample_grid, write_report
    from ..eval.runner import run_generated, run_real, summarize
    from ..methods import available_methods

    unknown = [m for m in args.methods if m not in available_methods()]
    if unknown:
        raise CLIError(f"Unknown method(s) {', '.join(unknown)}; available: {', '.join(available_methods())}")
    if not args.methods and args.protocol == "real":
        raise CLIError("The real-image protocol scores attribution maps; name at least one method (e.g. --methods daam).")
    if not 0.0 < args.noise < 1.0:
        raise CLIError(f"--noise must lie strictly between 0 and 1 (got {args.noise}).")
    if args.n < 1:
        raise CLIError(f"--n must be at least 1 (got {args.n}).")
    if args.batch < 1:
        raise CLIError(f"--batch must be at least 1 (got {args.batch}).")
    if args.draws < 1:
        raise CLIError(f"--draws must be at least 1 (got {args.draws}).")
    if args.per_head and "daam" not in args.methods:
        raise CLIError("--per-head scores DAAM's heads one by one; add daam to --methods.")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1 (got {args.steps}).")
    if args.coco is not None and not args.coco.is_dir():
        raise CLIError(f"--coco {args.coco} is not a folder; give a COCO-style folder (see attnscope.datasets.coco).")
    check_output_folder(args.out)
    check_device(args.device)
    defaults = settings_of(args.model)
    model = args.model or DEFAULT_MODEL
    pipe = open_pipeline(args.model, args.device, args.dtype or "float32", require_adapter=bool(args.methods))
    pipe.set_progress_bar_config(disable=True)
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
                                               batch=args.batch, seed=args.seed, progress=progress,
                                               per_head=args.per_head)
        gate = sum(r["match"] for r in records) / len(records)
        header.update(steps=steps, guidance=guidance, quality_gate=round(gate, 4),
                      colors_exact=round(sum(r["colors_exact"] for r in records) / len(records), 4),
                      quality_by_objects=pass_rates(records, lambda r: [r["n_objects"]]),
                      quality_by_shape=pass_rates(records, lambda r: r["shapes"]),
                      missed_objects=missed_objects(records), drawn_instead=drawn_instead(records),
                      missed_by_size=missed_by_size(records),
                      truncated_captions=sum(r["truncated"] for r in records), scored_pairs=len(pairs))
        extra = ("Quality gate: share of generated images in which the detector finds every captioned object "
                 f"with the right colour and shape: **{gate:.1%}** of {len(records)}.")
        sample_grid(images, records, args.out / "samples.png")
    else:
        pairs, images = run_real(pipe, scenes, args.methods, noise=args.noise, draws=args.draws,
                                 batch=args.batch, seed=args.seed, progress=progress, per_head=args.per_head)
        header.update(noise=args.noise, draws=args.draws, scored_pairs=len(pairs))
    print(file=sys.stderr)
    table = summarize(pairs, args.methods, seed=args.seed) if args.methods else {}
    if args.per_head and pairs:
        header["per_head"] = summarize_heads(pairs)
        extra = "\n\n".join(part for part in (extra, heads_markdown(header["per_head"])) if part)
    header["seconds"] = round(time.time() - start, 1)
    write_report(args.out, header, table, extra, per_image=records)
    for method in args.methods:
        example_grid(pairs, images, method, args.out / f"examples_{method}.png")
    print((args.out / "results.md").read_text())
    return 0
