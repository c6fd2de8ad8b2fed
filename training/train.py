"""Train the tiny ShapesWorld models on a CPU: seeded, resumable, time-boxed.

    python -m training.train vae  --out runs/vae  --minutes 8
    python -m training.train unet --vae runs/vae --out runs/unet --minutes 60
    python -m training.train unet --vae runs/vae --out runs/unet --minutes 30   # resumes

Each call continues from ``OUT/checkpoint.*`` if present and stops after ``--minutes`` (or
``--steps`` in total), writing a checkpoint every ``--every`` steps and at the end. Batches are a
pure function of (seed, step), so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnscope.datasets.shapes import make_scene, scene_tensor
from . import architectures as arch
from .checkpoint import EMA, ema_module, load_checkpoint, save_checkpoint


LOG_EVERY = 25  # steps between logged losses
BANK_CHUNK = 64  # scenes drawn and encoded together when a latent bank is built (chunk i is scene_batch step i)
BANK_STREAM = 1_000_000  # a bank of seed s draws its scenes from the stream of seed s + BANK_STREAM


def training_scenes(seed: int, step: int, batch: int, size: int = arch.IMAGE_SIZE) -> list:
    """The ``batch`` scenes (with their exact masks) of training step ``step``."""
    rng = np.random.default_rng([seed, step])
    return [make_scene(rng, size=size) for _ in range(batch)]


def bank_scenes(seed: int, start: int, count: int, chunk: int = BANK_CHUNK) -> list:
    """Scenes ``start .. start + count`` of the latent bank of ``seed`` (``start`` a multiple of ``chunk``)."""
    return training_scenes(seed + BANK_STREAM, start // chunk, count)


def scene_batch(seed: int, step: int, batch: int, size: int = arch.IMAGE_SIZE):
    """Images in [-1, 1] ``(B, 3, H, W)`` and captions for training step ``step``."""
    scenes = training_scenes(seed, step, batch, size)
    return scene_tensor(scenes), [s.caption for s in scenes]


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup)


def warm_start_vae(vae, source) -> list[str]:
    """Copy ``source``'s weights into ``vae`` resolution by resolution; returns the names left as initialised.

    A VAE with more levels shares its full-resolution layers with a shallower one: encoder blocks
    keep their index (each level halves the size), decoder blocks are counted from the image end.
    The layers at the new latent (bottleneck convolutions, the added levels) start fresh.
    """
    extra = len(vae.config.block_out_channels) - len(source.config.block_out_channels)
    if extra < 0:
        raise ValueError("--init-from must be a VAE with at most as many --levels as the new one.")
    prefix = "decoder.up_blocks."
    renamed = {}
    for key, value in source.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            key = f"{prefix}{int(index) + extra}.{rest}"
        renamed[key] = value
    target = vae.state_dict()
    matched = {k: v for k, v in renamed.items() if k in target and target[k].shape == v.shape}
    vae.load_state_dict(matched, strict=False)
    return sorted(set(target) - set(matched))


def train_vae(args) -> None:
    design = {"levels": args.levels, "latent_channels": args.latent_channels}
    saved = vae_design(args.out)
    if saved and saved != design:
        raise SystemExit(f"{args.out} holds a VAE with --levels {saved['levels']} --latent-channels "
                         f"{saved['latent_channels']}; pass those to resume it, or choose another --out.")
    vae = arch.shapes_vae(**design)
    if args.init_from is not None and not saved:
        fresh = warm_start_vae(vae, load_vae(args.init_from))
        print(f"warm start from {args.init_from}: {len(vae.state_dict()) - len(fresh)} tensors copied, {len(fresh)} fresh", flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    state = load_checkpoint(args.out, {"vae": vae}, opt) or {"step": 0, "seconds": 0.0, "log": [], "design": design}
    if args.init_from is not None:
        state.setdefault("init_from", str(args.init_from))
    start, step = time.time(), state["step"]
    while step < args.steps and time.time() - start < args.minutes * 60:
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
        images, _ = scene_batch(args.seed + 1, 0, 256)
        latents = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, 256, 64)])
        state["latent_std"] = float(latents.std())
        state["latent_mean"] = float(latents.mean())
    _save(args.out, {"vae": vae}, opt, state, step, start)


def _save(out, modules, opt, state, step, start, emas=None) -> None:
    state["step"] = step
    state["seconds"] = state.get("seconds", 0.0) + (time.time() - start) - state.get("_counted", 0.0)
    state["_counted"] = time.time() - start
    save_checkpoint(out, modules, opt, {k: v for k, v in state.items() if k != "_counted"}, emas)


def vae_design(folder) -> dict:
    """The ``levels`` and ``latent_channels`` a VAE run folder was started with ({} if there is none).

    Runs from before these flags existed have no record and were built with the defaults.
    """
    path = Path(folder) / "checkpoint.json"
    if not path.is_file():
        return {}
    default = {"levels": arch.VAE_LEVELS, "latent_channels": arch.LATENT_CHANNELS}
    return json.loads(path.read_text()).get("design", default)


def load_vae(folder):
    """The VAE of a training run folder, or of an exported pipeline folder (``folder/vae``)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32).eval().requires_grad_(False)
    vae = arch.shapes_vae(**vae_design(folder))
    state = load_checkpoint(folder, {"vae": vae})
    if state is None:
        raise FileNotFoundError(f"No VAE checkpoint in {folder}; train one with `python -m training.train vae`.")
    vae.register_to_config(scaling_factor=1.0 / state["latent_std"])
    return vae.eval().requires_grad_(False)


def latent_bank(vae, folder: Path, seed: int, size: int, chunk: int = BANK_CHUNK):
    """Latents and captions of ``size`` training scenes, encoded once and cached in ``folder``.

    Encoding with the VAE costs more than a UNet step, so the UNet trains on a fixed bank of
    pre-encoded scenes (built deterministically from ``seed``) instead of encoding every batch.
    """
    from safetensors.torch import load_file, save_file

    path, captions_path = folder / "bank.safetensors", folder / "bank.json"
    if path.is_file() and captions_path.is_file():
        captions = json.loads(captions_path.read_text())
        if len(captions) == size:
            latents = load_file(str(path))["latents"].float()
            channels, side = arch.latent_shape(vae)
            if tuple(latents.shape[1:]) != (channels, side, side):
                raise SystemExit(f"The bank in {folder} holds {tuple(latents.shape[1:])} latents, not this VAE's "
                                 f"{(channels, side, side)}; pass a --bank-from folder made with this VAE, or none.")
            return latents, captions
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, size, chunk):
            scenes = bank_scenes(seed, start, min(chunk, size - start), chunk)
            images, caps = scene_tensor(scenes).to(vae.device), [s.caption for s in scenes]
            latents.append((vae.encode(images).latent_dist.mean * vae.config.scaling_factor).cpu())
            captions += caps
            if (start // chunk) % 20 == 0:
                print(f"bank {start + len(caps)}/{size}", flush=True)
    latents = torch.cat(latents).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.half()}, str(path))
    captions_path.write_text(json.dumps(captions))
    return latents.half().float(), captions


def same_vae(a, b) -> bool:
    """Whether two VAEs have the same configuration and weights (so they make the same latents)."""
    if arch.latent_shape(a) != arch.latent_shape(b) or a.config.scaling_factor != b.config.scaling_factor:
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
    for name, ema in emas.items():  # "transformer@0.9995": a second EMA of the transformer
        ema.update(modules[ema_module(name)], step)
    if step % LOG_EVERY == 0:
        state["log"].append([step, round(loss.item(), 5)])
        print(f"{tag} step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    if step % args.every == 0:
        _save(args.out, modules, opt, state, step, start, emas)
    return step


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
    state = load_checkpoint(args.out, modules, opt, emas)
    if state is None and args.init_from is not None:
        # continue from an exported pipeline (EMA weights); the optimizer starts afresh
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(args.init_from / "unet", dtype=torch.float32).state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(args.init_from / "text_encoder", dtype=torch.float32).state_dict())
        emas = {"unet": EMA(unet, args.ema), "text_encoder": EMA(text_encoder, args.ema)}
        done = json.loads((args.init_from / "attnscope_defaults.json").read_text()).get("trained_steps", 0)
        state = {"step": done, "seconds": 0.0, "log": [], "init_from": str(args.init_from)}
    state = state or {"step": 0, "seconds": 0.0, "log": [], "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    bank, bank_captions = latent_bank(vae, Path(args.out), args.seed, args.bank)
    start, step = time.time(), state["step"]
    empty = arch.token_ids(tokenizer, [""])
    while step < args.steps and time.time() - start < args.minutes * 60:
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = torch.randint(0, len(bank_captions), (args.batch,), generator=gen)
        latents, captions = bank[index], [bank_captions[i] for i in index.tolist()]
        ids = arch.token_ids(tokenizer, captions)
        drop = torch.rand(len(captions), generator=gen) < args.uncond
        ids[drop] = empty
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(scheduler, t, args.snr_gamma)).mean()
        step = optimizer_step("unet", loss, opt, params, modules, emas, state, step, start, args)
    _save(args.out, modules, opt, state, step, start, emas)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["vae", "unet"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--vae", type=Path, help="VAE run folder (for unet)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kl", type=float, default=1e-6)
    parser.add_argument("--levels", type=int, default=arch.VAE_LEVELS,
                        help="VAE resolutions: 2 ** (levels - 1) down-sampling (3: 16×16 latents, as shipped; 4: 8×8)")
    parser.add_argument("--latent-channels", type=int, default=arch.LATENT_CHANNELS, help="VAE latent channels")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--uncond", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--bank", type=int, default=24_000, help="pre-encoded training scenes (unet)")
    parser.add_argument("--init-from", type=Path, help="exported pipeline folder to continue from (unet), or a VAE "
                        "whose full-resolution layers start a VAE with more --levels (vae)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "vae":
        args.batch, args.lr = args.batch or 16, args.lr or 1e-3
        train_vae(args)
    else:
        if args.vae is None:
            parser.error("unet training needs --vae RUN_FOLDER")
        args.batch, args.lr = args.batch or 64, args.lr or 8e-4
        train_unet(args)


if __name__ == "__main__":
    main()
