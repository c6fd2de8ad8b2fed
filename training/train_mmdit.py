"""Train the ShapesWorld MM-DiT (Stable Diffusion 3 layout) on a bank of pre-encoded ShapesWorld scenes.

    python -m training.train_mmdit --out runs/mmdit                 # the shipped recipe, on the shipped UNet's VAE and text encoder
    python -m training.train_mmdit --out runs/mmdit --minutes 60    # stops after an hour; run again to resume
    python -m training.train_mmdit --out runs/mmdit --device cuda   # batches are drawn on the CPU, so runs match across devices

The defaults are the shipped recipe's (``training/recipes/shapes-mmdit.json``): 10,000 steps at
batch 32, peak learning rate 3e-3 after 200 warmup steps with a linear cooldown over the last 30 %,
EMA 0.998, 10 % caption dropout.

Rectified-flow objective (SD3): ``x_t = (1 - σ) x_0 + σ ε``, the transformer predicts ``ε - x_0``,
σ drawn logit-normal (``--sigma-mean/--sigma-std``; the defaults draw more σ in 0.4–0.8); DiT's
adaLN-Zero initialisation; a REPA alignment loss towards the UNet's features at the token grid
(``repa.py``); bank scenes that name the shapes drawn worst are drawn more often (``--shape-weight``).
Like SD3, which starts from pretrained CLIP encoders, the text side is pretrained and frozen: both
CLIP encoders are made from a ShapesWorld UNet's text encoder (``--text-from``); only the
transformer trains, and the text features of every bank caption are computed once when a run
starts (``caption_features``). There is no T5.

Without T5, diffusers' SD3 pipeline appends 256 all-zero tokens to the prompt. SD3 text tokens
carry no position embedding, so those 256 tokens stay identical in every block, and softmax over
256 identical keys equals softmax over one such key with ``log 256`` added to its logit. Training
therefore uses a single zero token with that bias (added at the SDPA call by a torch-function
mode) — 280 context tokens cost as much as 25 — and the stock pipeline reproduces the same
computation at inference.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attnscope.core.tap import sdpa_arguments
from attnscope.datasets.shapes import SHAPES
from attnscope.pipelines import WEIGHTS

from . import architectures as arch
from . import repa
from .checkpoint import EMA, load_checkpoint
from .errors import ArgumentParser, TrainingError, run_command
from .train import LOG_EVERY, _save, latent_bank, load_vae, lr_at, optimizer_step, run_tokenizer, same_vae, time_left

#: the shipped recipe's scene weights: crosses, diamonds and stars, the shapes the MM-DiT draws worst, more often
SHAPE_WEIGHTS = {"cross": 2.0, "diamond": 1.5, "star": 1.5}


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


@torch.no_grad()
def caption_features(encoders, tokenizer, captions: list[str], device="cpu", batch: int = 500):
    """The frozen text side's output for every caption, once, plus the empty caption in the last row.

    The encoders do not train, so a step indexes these rows instead of tokenising and encoding
    its batch (about a tenth of a CPU step; ``training/benchmarks/mmdit_step.py``). Kept on the CPU, like
    the latent bank.

        context, pooled = caption_features(encoders, tokenizer, ["a red circle", "a blue star"])
        context.shape, pooled.shape   # (3, 25, 256), (3, 256)
    """
    texts = list(captions) + [""]
    contexts, pooleds = [], []
    for start in range(0, len(texts), batch):
        context, pooled = encode(encoders, arch.token_ids(tokenizer, texts[start:start + batch]).to(device))
        contexts.append(context.cpu())
        pooleds.append(pooled.cpu())
    return torch.cat(contexts), torch.cat(pooleds)


def clip_encoders_from(folder: Path) -> list:
    """SD3's two CLIP encoders, both made from the text encoder of a Stable Diffusion folder, frozen.

    SD3 conditions on the penultimate hidden state, so each copy gets one extra layer (a copy of
    the last): the penultimate state is then exactly the source encoder's last layer, and the extra
    layer only feeds the pooled embedding, whose projection starts as the identity.
    """
    from transformers import CLIPTextModel

    source = CLIPTextModel.from_pretrained(Path(folder) / "text_encoder", dtype=torch.float32)
    source = getattr(source, "text_model", source)  # transformers < 5 nests the stack one level deeper
    if len(source.encoder.layers) != arch.SD3_CLIP_LAYERS - 1 or source.config.hidden_size != arch.SD3_CLIP_WIDTH:
        raise TrainingError(f"{folder}/text_encoder is not a ShapesWorld UNet text encoder ({arch.SD3_CLIP_LAYERS - 1} "
                            f"layers of width {arch.SD3_CLIP_WIDTH}); pass --text-from a ShapesWorld UNet folder such as the shipped shapes-unet.")
    encoders = []
    for _ in range(2):
        encoder = arch.shapes_sd3_text_encoder(source.config.vocab_size)
        target = encoder.text_model
        target.embeddings.load_state_dict(source.embeddings.state_dict())
        for index, layer in enumerate(list(source.encoder.layers) + [source.encoder.layers[-1]]):
            target.encoder.layers[index].load_state_dict(layer.state_dict())
        target.final_layer_norm.load_state_dict(source.final_layer_norm.state_dict())
        torch.nn.init.eye_(encoder.text_projection.weight)
        encoders.append(encoder.eval().requires_grad_(False))
    return encoders


def adaln_zero(transformer) -> None:
    """DiT's adaLN-Zero initialisation: every adaptive-norm modulation and the output projection start at zero.

    diffusers leaves them at PyTorch's default init; with zeros each block starts as the identity
    (its gates are 0) and the prediction starts at 0.
    """
    with torch.no_grad():
        for module in transformer.modules():
            if type(module).__name__.startswith("AdaLayerNorm"):
                module.linear.weight.zero_()
                module.linear.bias.zero_()
        transformer.proj_out.weight.zero_()
        transformer.proj_out.bias.zero_()


def scheduled_lr(step: int, args) -> float:
    """The learning rate at ``step``: linear warmup over ``args.warmup`` steps, constant, then the cooldown.

    >>> scheduled_lr(9_999, argparse.Namespace(lr=3e-3, warmup=200, steps=10_000, cooldown=0.3))
    1e-06
    """
    return lr_at(step, args.lr, args.warmup) * cooldown_scale(step, args.steps, args.cooldown)


def cooldown_scale(step: int, total: int, cooldown: float) -> float:
    """Learning-rate factor of a warmup–stable–decay schedule: 1, then linear to 0 over the last ``cooldown`` of ``total`` steps."""
    if cooldown <= 0:
        return 1.0
    start = total * (1 - cooldown)
    return min(1.0, max(0.0, (total - step) / (total - start)))


def scene_weights(captions: list[str], shape_weights: dict[str, float]) -> torch.Tensor | None:
    """How often each bank scene is drawn: the mean weight of the shapes its caption names (1 for
    shapes not listed), or None when no shape is weighted (then draws are uniform).

        scene_weights(["a red cross and a blue circle", "a green square"], {"cross": 3.0})   # tensor([2., 1.])
    """
    if not shape_weights:
        return None
    weights = []
    for caption in captions:
        named = [word for word in caption.split() if word in SHAPES]
        weights.append(sum(shape_weights.get(word, 1.0) for word in named) / max(len(named), 1))
    return torch.tensor(weights, dtype=torch.float64)


def draw_scenes(count: int, batch: int, generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of ``batch`` bank scenes: uniform, or in proportion to ``weights`` (``scene_weights``)."""
    if weights is None:
        return torch.randint(0, count, (batch,), generator=generator)
    return torch.multinomial(weights, batch, replacement=True, generator=generator)


def _check_resumable(run: Path, repa_weight: float) -> None:
    """A run resumes with REPA on or off as it started (the projector's optimizer state depends on it)."""
    path = Path(run) / "checkpoint.json"
    if not path.is_file():
        return
    started = float(json.loads(path.read_text()).get("config", {}).get("repa", 0.0))
    if bool(started) != bool(repa_weight):
        raise TrainingError(f"{run} was started with --repa {started:g}; resume it with REPA "
                            f"{'on' if started else 'off'}, or choose another --out.")


def train(args) -> None:
    from transformers import CLIPTokenizer

    _check_resumable(args.out, args.repa)  # before the bank and the REPA features, which take minutes
    device = torch.device(args.device)
    vae = load_vae(args.vae).to(device)
    if not (args.out / "tokenizer").is_dir():
        CLIPTokenizer.from_pretrained(args.text_from / "tokenizer").save_pretrained(args.out / "tokenizer")
    tokenizer = run_tokenizer(args.out)
    torch.manual_seed(args.seed)
    transformer = arch.shapes_sd3_transformer()
    adaln_zero(transformer)  # a resumed run overwrites these weights below
    encoders = clip_encoders_from(args.text_from)
    modules = {"transformer": transformer, "text_encoder": encoders[0], "text_encoder_2": encoders[1]}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    token_grid = transformer.config.sample_size // transformer.config.patch_size
    tap = repa.BlockTap(transformer, args.repa_block) if args.repa else nullcontext()
    bank_folder = Path(args.bank_from or args.out)
    bank, captions_bank = latent_bank(vae, bank_folder, args.seed, args.bank)
    repa_latents = bank  # REPA's UNet reads the scenes in its own VAE's latents: encode them anew if ours differ
    repa_vae = load_vae(args.repa_from) if args.repa else None
    if repa_vae is not None and not same_vae(vae, repa_vae):
        repa_latents = lambda: latent_bank(repa_vae, bank_folder / "repa-bank", args.seed, args.bank)[0]  # noqa: E731
    del vae
    for module in modules.values():
        module.to(device)
    params = list(transformer.parameters())
    features = head = None
    if args.repa:
        features = repa.cached_teacher_features(bank_folder, args.repa_from, repa_latents, captions_bank, tokenizer,
                                                token_grid, args.seed, device=device)
        modules["repa_projector"] = head = repa.projector(transformer.inner_dim, features.shape[-1]).to(device)
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    emas = {"transformer": EMA(transformer, args.ema)}
    state = load_checkpoint(args.out, modules, opt, emas) or {"step": 0, "seconds": 0.0, "log": [], "config": config}
    text_context, text_pooled = caption_features(encoders, tokenizer, captions_bank, device)
    start, step = time.time(), state["step"]
    if args.steps <= step:
        print(f"{args.out} has already trained {step} of --steps {args.steps}.", flush=True)
    bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS)
    forward = compiled(transformer, args.compile)
    draw_weights = scene_weights(captions_bank, args.shape_weights)
    while step < args.steps and time_left(start, args.minutes):
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = draw_scenes(len(captions_bank), args.batch, gen, draw_weights)
        x0 = bank[index].to(device)
        dropped = torch.rand(args.batch, generator=gen) < args.uncond
        rows = torch.where(dropped, len(captions_bank), index)  # the last row holds the empty caption
        context, pooled = text_context[rows].to(device), text_pooled[rows].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        sigma = torch.sigmoid(args.sigma_mean + args.sigma_std * torch.randn(args.batch, generator=gen))[:, None, None, None].to(device)
        noisy = (1 - sigma) * x0 + sigma * noise
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(step, args)
        with bias, tap:
            pred = forward(noisy, encoder_hidden_states=context, pooled_projections=pooled,
                           timestep=sigma.flatten() * 1000).sample
            loss = flow_loss = F.mse_loss(pred, noise - x0)
            if head is not None:
                loss = loss + args.repa * repa.alignment_loss(tap.hidden, features[index].to(device), head)
        if (step + 1) % LOG_EVERY == 0:  # the flow loss alone, without REPA's term
            state.setdefault("flow_log", []).append([step + 1, round(flow_loss.item(), 5)])
        step = optimizer_step("mmdit", loss, opt, params, modules, emas, state, step, start, args)
    _save(args.out, modules, opt, state, step, start, emas)
    if step < args.steps and args.cooldown:
        print(f"Stopped by --minutes at step {step} of --steps {args.steps}, before the cooldown ended; "
              "run the same command again to finish it.", flush=True)


def compiled(transformer, mode: str | None):
    """``transformer`` compiled by ``torch.compile`` in ``mode`` ("default", "reduce-overhead", ...), or
    itself for None. The compiled module shares the transformer's weights, so checkpoints, EMAs and
    exports read the transformer itself; the zero-token mode and the REPA hook are traced into
    one graph for the run (training/tests/test_mmdit_training.py).

        forward = compiled(transformer, "default")   # then forward(noisy, ...) instead of transformer(noisy, ...)
    """
    return transformer if mode is None else torch.compile(transformer, mode=mode)


def build_pipeline(vae_run, run):
    """The trained MM-DiT (EMA weights) as a stock ``StableDiffusion3Pipeline``, and its checkpoint metadata."""
    from diffusers import StableDiffusion3Pipeline

    if not (Path(run) / "checkpoint.json").is_file():
        raise TrainingError(f"No MM-DiT checkpoint in {run}; pass the --out folder of python -m training.train_mmdit.")
    vae = load_vae(vae_run)
    vae.register_to_config(shift_factor=0.0)
    tokenizer = run_tokenizer(run)
    transformer = arch.shapes_sd3_transformer()
    encoders = [arch.shapes_sd3_text_encoder(len(tokenizer)) for _ in range(2)]
    state = load_checkpoint(run, {"transformer": transformer, "text_encoder": encoders[0],
                                  "text_encoder_2": encoders[1]}, use_ema=True)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=arch.shapes_flow_scheduler(), vae=vae,
        text_encoder=encoders[0].eval(), tokenizer=tokenizer, text_encoder_2=encoders[1].eval(),
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None,
    )
    return pipe, state


def _shape_weight(text: str) -> tuple[str, float] | None:
    """``SHAPE=W`` for ``--shape-weight`` (``none``: no shape weighted); a bad value is a usage error."""
    if text == "none":
        return None
    shape, _, weight = text.partition("=")
    if shape not in SHAPES or not weight:
        raise argparse.ArgumentTypeError(f"expected SHAPE=W with SHAPE one of {', '.join(SHAPES)}, or none, not {text!r}")
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"the weight in {text!r} must be a positive number")
    return shape, value


def parse_args(argv=None):
    """The arguments of ``python -m training.train_mmdit``; raises :class:`TrainingError` on a usage error."""
    shipped_unet = WEIGHTS / "shapes-unet"
    parser = ArgumentParser(prog="python -m training.train_mmdit", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a checkpoint)")
    parser.add_argument("--vae", type=Path, default=shipped_unet,
                        help="VAE run folder or exported model folder whose VAE makes the latents (default: the shipped UNet's)")
    parser.add_argument("--text-from", type=Path, default=shipped_unet,
                        help="Stable Diffusion folder whose text encoder (and tokenizer) the MM-DiT conditions on")
    parser.add_argument("--repa-from", type=Path, default=shipped_unet, help="Stable Diffusion folder whose UNet is REPA's encoder")
    parser.add_argument("--bank-from", type=Path, help="reuse the latent bank and REPA features cached in this run folder")
    parser.add_argument("--bank", type=int, default=24_000, help="pre-encoded training scenes")
    parser.add_argument("--minutes", type=float, help="stop this call after this many minutes (default: no limit)")
    parser.add_argument("--steps", type=int, default=10_000, help="total optimizer steps of the run (the cooldown ends there)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=500, help="steps between checkpoints")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--ema", type=float, default=0.998, help="EMA decay of the transformer (the exported weights)")
    parser.add_argument("--uncond", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    parser.add_argument("--warmup", type=int, default=200, help="learning-rate warmup steps")
    parser.add_argument("--cooldown", type=float, default=0.3,
                        help="fraction of --steps over which the learning rate decays linearly to 0 at the end (0: none)")
    parser.add_argument("--sigma-mean", type=float, default=0.3,
                        help="location of the logit-normal σ distribution (SD3's m; 0.3 with --sigma-std 0.8 draws more σ in 0.4–0.8)")
    parser.add_argument("--sigma-std", type=float, default=0.8, help="scale of the logit-normal σ distribution (SD3's s)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (batches are drawn on the CPU, so runs match across devices)")
    parser.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="compile the transformer with torch.compile in this mode (bare flag: default; on a CPU it "
                             "saves about a tenth of the step after minutes of compiling; training/benchmarks/mmdit_compile.py)")
    parser.add_argument("--repa", type=float, default=0.5, help="weight of the REPA alignment loss (0: off)")
    parser.add_argument("--repa-block", type=int, default=2, help="the block whose image tokens are aligned")
    parser.add_argument("--shape-weight", type=_shape_weight, action="append", metavar="SHAPE=W",
                        help="draw bank scenes naming SHAPE W times as often (repeatable; a scene's weight is the mean "
                             "over its shapes; given at all, it replaces the default cross=2 diamond=1.5 star=1.5; none: uniform)")
    args = parser.parse_args(argv)
    if not 0 <= args.cooldown <= 1:
        parser.error(f"--cooldown is a fraction of --steps in [0, 1], not {args.cooldown}")
    if args.sigma_std <= 0:
        parser.error(f"--sigma-std is the spread of the logit-normal σ distribution and must be positive, not {args.sigma_std}")
    if not 0 <= args.repa_block < arch.SD3_BLOCKS:
        parser.error(f"--repa-block must be a block of the transformer, 0 to {arch.SD3_BLOCKS - 1}, not {args.repa_block}")
    given = args.shape_weight
    if given is not None and None in given and len(given) > 1:
        parser.error("--shape-weight none means no weighted shape; do not combine it with SHAPE=W")
    args.shape_weights = dict(SHAPE_WEIGHTS) if given is None else dict(pair for pair in given if pair is not None)
    return args


def run(args) -> None:
    torch.set_num_threads(args.threads)
    train(args)


def main(argv=None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
