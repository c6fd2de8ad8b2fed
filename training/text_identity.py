"""Joint UNet + text-encoder training with a token-identity loss on the encoder (issue #27).

The shipped recipe trains the CLIP text encoder only through the UNet's denoising loss, and its
encoder maps caption positions 1–3 onto the start token's output (``attnscope.analysis``). This
stage is that recipe's UNet stage plus one term: a linear head reads every caption position's
final hidden state (what the UNet's cross-attention reads) and must name the position's own input
token (cross-entropy, weight ``--identity``). A causal encoder can then not collapse a position
onto the start token, whatever the denoiser would prefer. The head is dropped at export, so the
exported folder is the stock Stable Diffusion layout.

    python -m training.text_identity --vae runs/shapes-unet/vae --out runs/unet-id            # full recipe
    python -m training.text_identity --vae src/attnscope/weights/shapes-unet --out /tmp/id \\
        --steps 600 --batch 16 --bank 2048 --probe-every 100                                  # a short probe

``--identity 0`` is the shipped UNet stage (same batches, same loss). Probes for the experiments
in ``EXPERIMENTS.md``: ``--no-prefix`` drops the "a picture of" / "an image of" openings from the
captions, ``--mask-padding`` hides the padding after the first end token from the UNet. Every
``--probe-every`` steps (and at the end) the identity measure of the raw encoder is appended to
``OUT/identity.json``. Checkpoints resume like ``training.train``'s; the run folder
exports with ``python -m training.export unet --run OUT ...``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import architectures as arch
from .checkpoint import EMA, load_checkpoint
from .errors import ArgumentParser, run_command
from .train import (DEFAULTS, _save, draw_batch, latent_bank, load_vae, lr_at, min_snr_weights, run_tokenizer,
                    time_left)

PREFIXES = ("a picture of ", "an image of ")


def strip_prefix(caption: str) -> str:
    """``"a picture of a red star"`` → ``"a red star"``; other captions unchanged."""
    for prefix in PREFIXES:
        if caption.startswith(prefix):
            return caption[len(prefix):]
    return caption


def identity_loss(head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """Cross-entropy of ``head(hidden)`` against each position's own token id, over the positions
    after the start token up to and including the first end token (padding is left out)."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    first_end = torch.where(ids == end_id, positions, ids.shape[1]).min(dim=1).values
    keep = (positions[None] >= 1) & (positions[None] <= first_end[:, None])
    logits = head(hidden[keep])
    return F.cross_entropy(logits, ids[keep])


def probe(text_encoder, tokenizer) -> dict:
    from attnscope.analysis import encoder_identity

    was = text_encoder.training
    text_encoder.eval()
    report = encoder_identity(text_encoder, tokenizer=tokenizer)
    text_encoder.train(was)
    summary = report.summary()
    summary["positions_1_3"] = [[round(float(report.relative(d)), 4) for d in dist[1:4]] for dist in report.to_start]
    summary["collapsed"] = bool(report.failures())
    return summary


def train(args) -> None:
    vae = load_vae(args.vae)
    tokenizer = run_tokenizer(args.out)
    torch.manual_seed(args.seed)
    unet, text_encoder = arch.shapes_unet(), arch.shapes_text_encoder(len(tokenizer))
    head = torch.nn.Linear(arch.TEXT_WIDTH, len(tokenizer))
    scheduler = arch.shapes_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=args.lr, weight_decay=0.01)
    emas = {"unet": EMA(unet, args.ema), "text_encoder": EMA(text_encoder, args.ema)}
    modules = {"unet": unet, "text_encoder": text_encoder, "identity_head": head}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    state = load_checkpoint(args.out, modules, opt, emas) or {"step": 0, "seconds": 0.0, "log": [], "config": config}
    bank, bank_captions = latent_bank(vae, Path(args.bank_dir or args.out), args.seed, args.bank)
    if args.no_prefix:
        bank_captions = [strip_prefix(c) for c in bank_captions]
    log_path = Path(args.out) / "identity.json"
    probes = json.loads(log_path.read_text()) if log_path.is_file() else []
    start, step = time.time(), state["step"]
    empty = arch.token_ids(tokenizer, [""])
    end_id = tokenizer.eos_token_id
    if step == 0 and args.probe_every:
        probes.append({"step": 0, **probe(text_encoder, tokenizer)})
    while step < args.steps and time_left(start, args.minutes):
        ids, noise, t, noisy = draw_batch(bank, bank_captions, tokenizer, empty, scheduler, args, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        hidden = text_encoder(ids)[0]
        mask = None
        if args.mask_padding:  # the UNet reads the start token up to the first end token only
            positions = torch.arange(ids.shape[1])
            first_end = torch.where(ids == end_id, positions, ids.shape[1]).min(dim=1).values
            mask = (positions[None] <= first_end[:, None]).long()
        pred = unet(noisy, t, hidden, encoder_attention_mask=mask).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(scheduler, t, args.snr_gamma)).mean()
        aux = identity_loss(head, hidden, ids, end_id) if args.identity else torch.zeros(())
        opt.zero_grad(set_to_none=True)
        (loss + args.identity * aux).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        for name, ema in emas.items():
            ema.update(modules[name], step)
        if step % 25 == 0:
            state["log"].append([step, round(loss.item(), 5), round(aux.item(), 5)])
            print(f"unet+id step {step} loss {loss.item():.4f} identity {aux.item():.4f} ({time.time() - start:.0f}s)", flush=True)
        if args.probe_every and step % args.probe_every == 0:
            probes.append({"step": step, "seconds": round(time.time() - start, 1), **probe(text_encoder, tokenizer)})
            log_path.write_text(json.dumps(probes, indent=1))
            print(f"  probe {probes[-1]}", flush=True)
        if step % args.every == 0:
            _save(args.out, modules, opt, state, step, start, emas)
    _save(args.out, modules, opt, state, step, start, emas)
    if args.probe_every:
        if not probes or probes[-1]["step"] != step:
            probes.append({"step": step, "seconds": round(time.time() - start, 1), **probe(text_encoder, tokenizer)})
        log_path.write_text(json.dumps(probes, indent=1))


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m training.text_identity", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumed if it holds a checkpoint)")
    parser.add_argument("--vae", required=True, type=Path, help="VAE run folder or exported model folder")
    parser.add_argument("--identity", type=float, default=0.1, help="weight of the token-identity loss (0: the shipped recipe)")
    parser.add_argument("--no-prefix", action="store_true", help="drop 'a picture of' / 'an image of' from captions")
    parser.add_argument("--probe-every", type=int, default=500, help="steps between identity probes (0: none)")
    parser.add_argument("--mask-padding", action="store_true",
                        help="probe: the UNet's cross-attention skips the padding after the first end token")
    parser.add_argument("--bank-dir", type=Path, help="folder of a cached latent bank to share between runs (default --out)")
    parser.add_argument("--minutes", type=float, help="stop this call after this many minutes")
    parser.add_argument("--steps", type=int, default=DEFAULTS["unet"]["steps"])
    parser.add_argument("--batch", type=int, default=DEFAULTS["unet"]["batch"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["unet"]["lr"])
    parser.add_argument("--every", type=int, default=DEFAULTS["unet"]["every"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--uncond", type=float, default=0.1)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--bank", type=int, default=24_000)
    return parser.parse_args(argv)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    train(args)


def main(argv=None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
