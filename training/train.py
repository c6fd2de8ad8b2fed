"""Train the ShapesWorld VAE and UNet on a CPU: seeded, resumable, optionally time-boxed.

    python -m training.train vae  --out runs/vae
    python -m training.train unet --vae runs/vae --out runs/unet
    python -m training.train unet --vae runs/vae --out runs/unet --minutes 60   # stops after an hour; run again to resume

The defaults are the shipped recipe's (``training/recipes/shapes-unet.json``; the VAE's recipe
then lowers ``--lr`` to 4e-4 for its last steps). Each call continues from ``OUT/checkpoint.*`` if
present and trains until ``--steps`` in total, or until ``--minutes`` of this call have passed,
writing a checkpoint every ``--every`` steps and at the end. Batches are a pure function of
(seed, step), so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnscope.datasets.shapes import make_scene, scene_tensor

from . import architectures as arch
from .checkpoint import EMA, load_checkpoint, save_checkpoint
from .errors import ArgumentParser, TrainingError, run_command

LOG_EVERY = 25  # steps between logged losses
BANK_CHUNK = 64  # scenes drawn and encoded together when a latent bank is built (chunk i is scene_batch step i)
BANK_STREAM = 1_000_000  # a bank of seed s draws its scenes from the stream of seed s + BANK_STREAM
LATENT_STAT_SCENES = 256  # scenes whose latents set the VAE's scaling factor
#: the shipped recipe's settings per model, for the flags left unset
DEFAULTS = {"vae": {"steps": 1562, "batch": 16, "lr": 1e-3, "every": 100},
            "unet": {"steps": 7453, "batch": 32, "lr": 6e-4, "every": 200}}


def training_scenes(seed: int, step: int, batch: int, size: int = arch.IMAGE_SIZE) -> list:
    """The ``batch`` scenes (with their exact masks) of training step ``step``."""
    rng = np.random.default_rng([seed, step])
    return [make_scene(rng, size=size) for _ in range(batch)]


def scene_batch(seed: int, step: int, batch: int, size: int = arch.IMAGE_SIZE):
    """Images in [-1, 1] ``(B, 3, H, W)`` and captions for training step ``step``."""
    scenes = training_scenes(seed, step, batch, size)
    return scene_tensor(scenes), [s.caption for s in scenes]


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup)


def time_left(start: float, minutes: float | None) -> bool:
    """Whether a call started at ``start`` may take another step under ``--minutes`` (None: no limit)."""
    return minutes is None or time.time() - start < minutes * 60


def train_vae(args) -> None:
    vae = arch.shapes_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    state = load_checkpoint(args.out, {"vae": vae}, opt) or {"step": 0, "seconds": 0.0, "log": []}
    start, step = time.time(), state["step"]
    while step < args.steps and time_left(start, args.minutes):
        images, _ = scene_batch(args.seed, step, args.batch)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, 100)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + args.kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            state["log"].append([step, round(loss.item(), 5)])
            print(f"vae step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
        if step % args.every == 0:
            _save(args.out, {"vae": vae}, opt, state, step, start)
    with torch.no_grad():
        images, _ = scene_batch(args.seed + 1, 0, LATENT_STAT_SCENES)
        latents = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
        state["latent_std"] = float(latents.std())
        state["latent_mean"] = float(latents.mean())
    _save(args.out, {"vae": vae}, opt, state, step, start)


def _save(out, modules, opt, state, step, start, emas=None) -> None:
    state["step"] = step
    state["seconds"] = state.get("seconds", 0.0) + (time.time() - start) - state.get("_counted", 0.0)
    state["_counted"] = time.time() - start
    save_checkpoint(out, modules, opt, {k: v for k, v in state.items() if k != "_counted"}, emas)


def load_vae(folder):
    """The VAE of a training run folder, or of an exported pipeline folder (``folder/vae``)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32).eval().requires_grad_(False)
    vae = arch.shapes_vae()
    state = load_checkpoint(folder, {"vae": vae})
    if state is None:
        raise TrainingError(f"No VAE in {folder}; pass a VAE run folder (python -m training.train vae --out FOLDER) "
                            "or an exported model folder.")
    vae.register_to_config(scaling_factor=1.0 / state["latent_std"])
    return vae.eval().requires_grad_(False)


def latent_bank(vae, folder: Path, seed: int, size: int, chunk: int = BANK_CHUNK):
    """Latents and captions of ``size`` training scenes, encoded once and cached in ``folder``.

    Encoding with the VAE costs more than a denoiser step, so the denoisers train on a fixed bank
    of pre-encoded scenes (built deterministically from ``seed``) instead of encoding every batch.
    """
    from safetensors.torch import load_file

    from attnscope.files import save_tensors

    path, captions_path = folder / "bank.safetensors", folder / "bank.json"
    if path.is_file() and captions_path.is_file():
        captions = json.loads(captions_path.read_text())
        if len(captions) == size:
            return load_file(str(path))["latents"].float(), captions
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, size, chunk):
            scenes = training_scenes(seed + BANK_STREAM, start // chunk, min(chunk, size - start))
            images, caps = scene_tensor(scenes).to(vae.device), [s.caption for s in scenes]
            latents.append((vae.encode(images).latent_dist.mean * vae.config.scaling_factor).cpu())
            captions += caps
            if (start // chunk) % 20 == 0:
                print(f"bank {start + len(caps)}/{size}", flush=True)
    latents = torch.cat(latents).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({"latents": latents.half()}, path)
    captions_path.write_text(json.dumps(captions))
    return latents.half().float(), captions


def same_vae(a, b) -> bool:
    """Whether two VAEs have the same scaling and weights (so they make the same latents)."""
    if a.config.scaling_factor != b.config.scaling_factor:
        return False
    other = b.state_dict()
    return all(torch.equal(value, other[key].to(value)) for key, value in a.state_dict().items())


def optimizer_step(tag, loss, opt, params, modules, emas, state, step, start, args) -> int:
    """Backward, clip, step, update the EMAs, log and checkpoint; returns the new step count."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    step += 1
    for name, ema in emas.items():
        ema.update(modules[name], step)
    if step % LOG_EVERY == 0:
        state["log"].append([step, round(loss.item(), 5)])
        print(f"{tag} step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    if step % args.every == 0:
        _save(args.out, modules, opt, state, step, start, emas)
    return step


def draw_batch(bank, bank_captions, tokenizer, empty, scheduler, args, step: int):
    """``(ids, noise, t, noisy)`` of one UNet training step: bank latents and their captions (dropped to
    the empty caption at ``--uncond``), noise and timesteps, drawn from the seed and the step alone so
    that resumed runs and runs compared with each other see the same batches."""
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    index = torch.randint(0, len(bank_captions), (args.batch,), generator=gen)
    latents, captions = bank[index], [bank_captions[i] for i in index.tolist()]
    ids = arch.token_ids(tokenizer, captions)
    drop = torch.rand(len(captions), generator=gen) < args.uncond
    ids[drop] = empty
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
    return ids, noise, t, scheduler.add_noise(latents, noise, t)


def run_tokenizer(folder) -> "CLIPTokenizer":
    """The tokenizer a run trains with: saved in ``folder/tokenizer`` at its start, reloaded on resume
    and at export, so a run stays consistent even if the tokenizer builder changes."""
    from transformers import CLIPTokenizer

    path = Path(folder) / "tokenizer"
    if (path / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(path)
    tokenizer = arch.shapes_tokenizer()
    tokenizer.save_pretrained(path)
    return tokenizer


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction (Hang et al., 2023)."""
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(args) -> None:
    vae = load_vae(args.vae)
    tokenizer = run_tokenizer(args.out)
    torch.manual_seed(args.seed)
    unet, text_encoder = arch.shapes_unet(), arch.shapes_text_encoder(len(tokenizer))
    scheduler = arch.shapes_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    emas = {"unet": EMA(unet, args.ema), "text_encoder": EMA(text_encoder, args.ema)}
    modules = {"unet": unet, "text_encoder": text_encoder}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    state = load_checkpoint(args.out, modules, opt, emas) or {"step": 0, "seconds": 0.0, "log": [], "config": config}
    bank, bank_captions = latent_bank(vae, Path(args.out), args.seed, args.bank)
    start, step = time.time(), state["step"]
    empty = arch.token_ids(tokenizer, [""])
    while step < args.steps and time_left(start, args.minutes):
        ids, noise, t, noisy = draw_batch(bank, bank_captions, tokenizer, empty, scheduler, args, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(scheduler, t, args.snr_gamma)).mean()
        step = optimizer_step("unet", loss, opt, params, modules, emas, state, step, start, args)
    _save(args.out, modules, opt, state, step, start, emas)


def parse_args(argv=None):
    """The arguments of ``python -m training.train``; raises :class:`TrainingError` on a usage error."""
    parser = ArgumentParser(prog="python -m training.train", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["vae", "unet"])
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumed if it holds a checkpoint)")
    parser.add_argument("--vae", type=Path, help="VAE run folder or exported model folder (unet only)")
    parser.add_argument("--minutes", type=float, help="stop this call after this many minutes (default: no limit)")
    parser.add_argument("--steps", type=int, help="total optimizer steps of the run (vae: 1562, unet: 7453)")
    parser.add_argument("--batch", type=int, help="batch size (vae: 16, unet: 32)")
    parser.add_argument("--lr", type=float, help="peak learning rate (vae: 1e-3, unet: 6e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, help="steps between checkpoints (vae: 100, unet: 200)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--kl", type=float, default=1e-6, help="KL weight of the VAE loss")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the UNet and text encoder")
    parser.add_argument("--uncond", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="γ of the min-SNR loss weights")
    parser.add_argument("--warmup", type=int, default=200, help="learning-rate warmup steps of the UNet")
    parser.add_argument("--bank", type=int, default=24_000, help="pre-encoded training scenes (unet)")
    args = parser.parse_args(argv)
    for name, value in DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.model == "unet" and args.vae is None:
        parser.error("unet training needs --vae, a VAE run folder or an exported model folder")
    return args


def run(args) -> None:
    torch.set_num_threads(args.threads)
    if args.model == "vae":
        train_vae(args)
    else:
        train_unet(args)


def main(argv=None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
