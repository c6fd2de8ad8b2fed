"""Assemble trained checkpoints into a standard diffusers pipeline folder.

    python -m training.export unet  --vae runs/vae --run runs/unet  --out src/attnscope/weights/shapes-unet
    python -m training.export mmdit --vae runs/vae --run runs/mmdit --out src/attnscope/weights/shapes-mmdit

The folder loads with ``DiffusionPipeline.from_pretrained(folder)``; weights are the EMA copies
(``--raw``: the last step's own weights), the denoiser and VAE stored in float16 to keep the
package small (they load as float32 unless asked otherwise), the text encoders in float32.
``attnscope_defaults.json`` records the sampling settings the model was measured with.
Several ``--run`` folders of one design (checkpoints kept along a run, say) export as one model
whose weights are their mean, a checkpoint average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnscope.files import staged_folder
from . import architectures as arch
from .checkpoint import load_checkpoint
from .train import load_vae, run_tokenizer

DEFAULTS_FILE = "attnscope_defaults.json"


def build_unet_pipeline(vae_run, unet_run, use_ema: bool | float = True):
    from diffusers import StableDiffusionPipeline

    vae = load_vae(vae_run)
    tokenizer = run_tokenizer(unet_run)
    unet, text_encoder = arch.shapes_unet(), arch.shapes_text_encoder(len(tokenizer))
    state = load_checkpoint(unet_run, {"unet": unet, "text_encoder": text_encoder}, use_ema=use_ema)
    if state is None:
        raise FileNotFoundError(f"No UNet checkpoint in {unet_run}.")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=arch.shapes_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe, state


def export(pipe, out: Path, defaults: dict) -> Path:
    """Save ``pipe`` to ``out`` atomically: diffusers models in float16, text encoders in float32.

    diffusers loads float16 files as float32 unless asked otherwise; transformers keeps the stored
    dtype, so a float16 text encoder would break a plain ``from_pretrained(folder)`` on a CPU.
    """
    from diffusers import ModelMixin

    halved = [m for m in pipe.components.values() if isinstance(m, ModelMixin)]
    with staged_folder(out) as staging:
        for module in halved:
            module.to(torch.float16)
        try:
            pipe.save_pretrained(staging, safe_serialization=True)
        finally:
            for module in halved:
                module.to(torch.float32)
        (staging / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=1))
    return out


def average_weights(modules: list[torch.nn.Module]) -> torch.nn.Module:
    """Set the first module's floating-point weights to the mean over all ``modules``; return it.

    >>> average_weights([pipe_a.transformer, pipe_b.transformer])  # doctest: +SKIP
    """
    first, states = modules[0], [m.state_dict() for m in modules]
    for index, state in enumerate(states[1:], start=1):
        if [(k, v.shape) for k, v in state.items()] != [(k, v.shape) for k, v in states[0].items()]:
            raise ValueError(f"Checkpoint {index} has another design than checkpoint 0; average only runs of one design.")
    averaged = {}
    for name, value in states[0].items():
        if value.dtype.is_floating_point:
            total = sum(state[name].double() for state in states)
            averaged[name] = (total / len(states)).to(value.dtype)
        else:
            averaged[name] = value
    first.load_state_dict(averaged)
    return first


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["unet", "mmdit"])
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument("--run", "--unet", dest="runs", type=Path, required=True, action="append",
                        help="the denoiser's training run folder; given more than once, the weights are averaged")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20, help="recommended sampling steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="recommended guidance scale")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of their EMA (for comparison)")
    parser.add_argument("--ema-decay", type=float, help="export the EMA kept with this decay (train_mmdit --extra-ema)")
    args = parser.parse_args(argv)
    if args.kind == "unet":
        build = build_unet_pipeline
    else:
        from .train_mmdit import build_pipeline as build
    if args.raw and args.ema_decay:
        parser.error("--raw and --ema-decay exclude each other: pick the raw weights or one EMA.")
    use_ema = args.ema_decay or not args.raw
    try:
        built = [build(args.vae, run, use_ema=use_ema) for run in args.runs]
    except ValueError as error:
        raise SystemExit(str(error)) from None
    pipe, state = built[0]
    for name, module in pipe.components.items() if len(built) > 1 else ():
        if isinstance(module, torch.nn.Module):
            try:
                average_weights([other.components[name] for other, _ in built])
            except ValueError as error:
                raise SystemExit(f"{name}: {error}") from None
    defaults = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "height": arch.IMAGE_SIZE,
                "width": arch.IMAGE_SIZE, "trained_steps": state["step"], "trained_seconds": round(state["seconds"]),
                "weights": "raw" if args.raw else f"ema@{args.ema_decay:g}" if args.ema_decay else "ema"}
    if len(built) > 1:
        defaults["averaged"] = [{"run": str(run), "trained_steps": run_state["step"]} for run, (_, run_state) in zip(args.runs, built)]
    print(export(pipe, args.out, defaults))


if __name__ == "__main__":
    main()
