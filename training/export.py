"""Assemble a trained run into a standard diffusers pipeline folder.

    python -m training.export unet  --vae runs/vae --run runs/unet --out runs/shapes-unet
    python -m training.export mmdit --vae src/attnscope/weights/shapes-unet --run runs/mmdit --out runs/shapes-mmdit

The folder loads with ``DiffusionPipeline.from_pretrained(folder)`` (an MM-DiT folder, which has
no T5, with ``text_encoder_3=None, tokenizer_3=None``). Weights are the EMA copies; the denoiser
and VAE are stored in float16 to keep the package small (they load as float32 unless asked
otherwise), the text encoders in float32. ``attnscope_defaults.json`` records the sampling
settings the model is meant to run with (20 steps; guidance 7.5 for the UNet, 7 for the MM-DiT).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnscope.files import staged_folder
from attnscope.pipelines import DEFAULTS_FILE

from . import architectures as arch
from .checkpoint import load_checkpoint
from .errors import ArgumentParser, TrainingError, run_command
from .train import load_vae, run_tokenizer

#: recommended guidance scale of each kind of model, as shipped
GUIDANCE = {"unet": 7.5, "mmdit": 7.0}


def build_unet_pipeline(vae_run, unet_run):
    """The trained UNet and text encoder (EMA weights) as a stock ``StableDiffusionPipeline``, and the run's metadata."""
    from diffusers import StableDiffusionPipeline

    if not (Path(unet_run) / "checkpoint.json").is_file():
        raise TrainingError(f"No UNet checkpoint in {unet_run}; pass the --out folder of python -m training.train unet.")
    vae = load_vae(vae_run)
    tokenizer = run_tokenizer(unet_run)
    unet, text_encoder = arch.shapes_unet(), arch.shapes_text_encoder(len(tokenizer))
    state = load_checkpoint(unet_run, {"unet": unet, "text_encoder": text_encoder}, use_ema=True)
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
        drop_source_paths(staging)
    return out


def drop_source_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` from the components' configs: diffusers records the folder a component
    was loaded from (an absolute path on the training machine), which means nothing in a shipped model."""
    for config in folder.glob("*/config.json"):
        record = json.loads(config.read_text())
        if record.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def parse_args(argv=None):
    """The arguments of ``python -m training.export``; raises :class:`TrainingError` on a usage error."""
    parser = ArgumentParser(prog="python -m training.export", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["unet", "mmdit"])
    parser.add_argument("--vae", type=Path, required=True, help="VAE run folder or exported model folder")
    parser.add_argument("--run", type=Path, required=True, help="the denoiser's training run folder")
    parser.add_argument("--out", type=Path, required=True, help="the pipeline folder to write (replaced if it exists)")
    parser.add_argument("--steps", type=int, default=20, help="recommended sampling steps")
    parser.add_argument("--guidance", type=float, help="recommended guidance scale (unet: 7.5, mmdit: 7)")
    args = parser.parse_args(argv)
    if args.guidance is None:
        args.guidance = GUIDANCE[args.kind]
    return args


def run(args) -> Path:
    if args.kind == "unet":
        pipe, state = build_unet_pipeline(args.vae, args.run)
    else:
        from .train_mmdit import build_pipeline

        pipe, state = build_pipeline(args.vae, args.run)
    defaults = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "height": arch.IMAGE_SIZE,
                "width": arch.IMAGE_SIZE, "trained_steps": state["step"], "trained_seconds": round(state["seconds"])}
    out = export(pipe, args.out, defaults)
    print(out, flush=True)
    return out


def main(argv=None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
