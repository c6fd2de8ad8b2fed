"""Train the tiny MM-DiT (Stable Diffusion 3 layout) on the same latent bank as the UNet.

    python -m attnscope.models.train_mmdit --vae runs/vae --bank-from runs/unet --out runs/mmdit --minutes 60

Rectified-flow objective (SD3): ``x_t = (1 - σ) x_0 + σ ε``, the transformer predicts ``ε - x_0``,
σ drawn logit-normal. Two small CLIP encoders with projection are trained jointly; there is no T5.

Without T5, diffusers' SD3 pipeline appends 256 all-zero tokens to the prompt. SD3 text tokens
carry no position embedding, so those 256 tokens stay identical in every block, and softmax over
256 identical keys equals softmax over one such key with ``log 256`` added to its logit. Training
therefore uses a single zero token with that bias (added at the SDPA call by a torch-function
mode) — 280 context tokens cost as much as 25 — and the stock pipeline reproduces the same
computation at inference.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import architectures as arch
from ..core.tap import sdpa_arguments
from .checkpoint import EMA, load_checkpoint
from .train import _save, latent_bank, load_vae, lr_at, optimizer_step, run_tokenizer


class ZeroTokenBias(TorchFunctionMode):
    """Adds ``log(n)`` to the logit of the last key (the single zero token) at every SDPA call."""

    def __init__(self, n_tokens: int):
        super().__init__()
        self.bias = math.log(n_tokens)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            _, key, _, _ = sdpa_arguments(args, kwargs)
            mask = torch.zeros(1, key.shape[-2], dtype=key.dtype, device=key.device)
            mask[:, -1] = self.bias
            kwargs["attn_mask"] = mask
        return func(*args, **kwargs)


def encode(encoders, ids: torch.Tensor):
    """SD3's CLIP path: penultimate hidden states concatenated, pooled projections concatenated."""
    hidden, pooled = [], []
    for encoder in encoders:
        out = encoder(ids, output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    context = torch.cat(hidden, dim=-1)
    zero = torch.zeros_like(context[:, :1])
    return torch.cat([context, zero], dim=1), torch.cat(pooled, dim=-1)


def train(args) -> None:
    vae = load_vae(args.vae)
    tokenizer = run_tokenizer(args.out)
    torch.manual_seed(args.seed)
    transformer = arch.shapes_sd3_transformer()
    encoders = [arch.shapes_sd3_text_encoder(len(tokenizer), args.seed + i) for i in range(2)]
    modules = {"transformer": transformer, "text_encoder": encoders[0], "text_encoder_2": encoders[1]}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    emas = {name: EMA(m, args.ema) for name, m in modules.items()}
    state = load_checkpoint(args.out, modules, opt, emas) or {"step": 0, "seconds": 0.0, "log": []}
    bank, captions_bank = latent_bank(vae, Path(args.bank_from or args.out), args.seed, args.bank)
    empty = tokenizer([""], padding="max_length", max_length=arch.MAX_TOKENS, return_tensors="pt").input_ids
    start, step = time.time(), state["step"]
    bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS)
    while step < args.steps and time.time() - start < args.minutes * 60:
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = torch.randint(0, len(captions_bank), (args.batch,), generator=gen)
        x0 = bank[index]
        ids = tokenizer([captions_bank[i] for i in index.tolist()], padding="max_length",
                        max_length=arch.MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        ids[torch.rand(args.batch, generator=gen) < args.uncond] = empty
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(args.batch, generator=gen))[:, None, None, None]
        noisy = (1 - sigma) * x0 + sigma * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup)
        context, pooled = encode(encoders, ids)
        with bias:
            pred = transformer(noisy, encoder_hidden_states=context, pooled_projections=pooled,
                               timestep=sigma.flatten() * 1000).sample
        loss = F.mse_loss(pred, noise - x0)
        step = optimizer_step("mmdit", loss, opt, params, modules, emas, state, step, start, args)
    _save(args.out, modules, opt, state, step, start, emas)


def build_pipeline(vae_run, run):
    """The trained MM-DiT as a stock ``StableDiffusion3Pipeline`` (EMA weights)."""
    from diffusers import StableDiffusion3Pipeline

    vae = load_vae(vae_run)
    vae.register_to_config(shift_factor=0.0)
    tokenizer = run_tokenizer(run)
    transformer = arch.shapes_sd3_transformer()
    encoders = [arch.shapes_sd3_text_encoder(len(tokenizer), i) for i in range(2)]
    state = load_checkpoint(run, {"transformer": transformer, "text_encoder": encoders[0],
                                  "text_encoder_2": encoders[1]}, use_ema=True)
    if state is None:
        raise FileNotFoundError(f"No MM-DiT checkpoint in {run}.")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=arch.shapes_flow_scheduler(), vae=vae,
        text_encoder=encoders[0].eval(), tokenizer=tokenizer, text_encoder_2=encoders[1].eval(),
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None,
    )
    return pipe, state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bank-from", type=Path, help="reuse the latent bank cached in this run folder")
    parser.add_argument("--bank", type=int, default=24_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--uncond", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args)


if __name__ == "__main__":
    main()
