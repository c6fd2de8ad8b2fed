"""Train the tiny MM-DiT (Stable Diffusion 3 layout) on the same latent bank as the UNet.

    python -m training.train_mmdit --vae src/attnscope/weights/shapes-unet --out runs/mmdit --minutes 80
    python -m training.train_mmdit ... --steps 8541 --cooldown 0.3 --device cuda   # decay the rate over the last 30 %

Rectified-flow objective (SD3): ``x_t = (1 - σ) x_0 + σ ε``, the transformer predicts ``ε - x_0``,
σ drawn logit-normal (``--sigma-mean/--sigma-std``; the shipped run draws more σ in 0.4–0.8,
where hybrid sampling found the MM-DiT failing, docs/models.md); DiT's adaLN-Zero initialisation;
a REPA alignment loss towards the shipped UNet's features (``repa.py``; most of the gain at equal steps, docs/models.md;
``--repa-grid 8 --repa-grid 16`` adds its 16×16 features, four cells per token: a run with it gated no better). ``--distill``
regresses on the UNet's denoiser instead of the data target (``distill.py``; lower loss at equal
steps, but its extra pass made it worse at equal time on a CPU). ``--object-weight`` weighs the
loss on latent cells that hold objects more (``object_weight.py``; a run with 3 gated lower).
Like SD3, which starts from pretrained CLIP encoders, the text side is pretrained and frozen: both CLIP encoders are made from
the shipped UNet's text encoder (``--text-from``); only the transformer trains, and the text
features of every bank caption are computed once when a run starts (``caption_features``).
There is no T5.

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

from attnscope.pipelines import WEIGHTS
from . import architectures as arch
from attnscope.core.tap import sdpa_arguments
from attnscope.files import staged_folder
from . import repa
from .distill import SIGMA_WINDOW, FlowTeacher
from .checkpoint import EMA, ema_name, load_checkpoint
from .object_weight import object_cells, weighted_mse
from .train import LOG_EVERY, _save, latent_bank, load_vae, lr_at, optimizer_step, run_tokenizer, same_vae


class ZeroTokenBias(TorchFunctionMode):
    """Adds ``log(n)`` to the logit of the last key (the single zero token) at every joint SDPA call.

    A transformer with dual attention (SD3.5) also attends among its ``image_tokens`` alone; calls
    with exactly that many keys hold no zero token and are left as they are.
    """

    def __init__(self, n_tokens: int, image_tokens: int | None = None):
        super().__init__()
        self.bias = math.log(n_tokens)
        self.image_tokens = image_tokens

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            _, key, _, _ = sdpa_arguments(args, kwargs)
            if key.shape[-2] == self.image_tokens:
                return func(*args, **kwargs)
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
    its batch (about a tenth of a CPU step; ``benchmarks/mmdit_step.py``). Kept on the CPU, like
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
        raise ValueError(f"{folder}/text_encoder is not a ShapesWorld UNet text encoder "
                         f"({arch.SD3_CLIP_LAYERS - 1} layers of width {arch.SD3_CLIP_WIDTH}); pass --text-from the shipped UNet folder.")
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


def exported_encoders(folder: Path) -> list:
    """The two (frozen) CLIP encoders of an exported ShapesWorld MM-DiT folder."""
    from transformers import CLIPTextModelWithProjection

    return [CLIPTextModelWithProjection.from_pretrained(Path(folder) / name, dtype=torch.float32).eval().requires_grad_(False)
            for name in ("text_encoder", "text_encoder_2")]


DESIGN_FLAGS = ("patch", "heads", "blocks", "repa", "dual_attention", "qk_norm")
#: runs started before these flags existed (design 2, docs/models.md) were built this way
LEGACY_DESIGN = {"patch": 1, "heads": 3, "blocks": 4, "repa": 0.0, "dual_attention": 0, "qk_norm": False}


def run_design(run: Path) -> dict:
    """The size flags a run folder was started with (its ``checkpoint.json``), or {} for a new run."""
    path = Path(run) / "checkpoint.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text()).get("config", {})
    return {flag: saved.get(flag, LEGACY_DESIGN[flag]) for flag in DESIGN_FLAGS}


def trained_latent(run: Path) -> list | None:
    """``[channels, side]`` of the latents a run folder trains on (None for a new run; older runs used the shipped VAE)."""
    path = Path(run) / "checkpoint.json"
    return json.loads(path.read_text())["config"].get("latent", list(arch.SHIPPED_LATENT)) if path.is_file() else None


def _check_same_design(run: Path, config: dict) -> None:
    """A resumed run must be built as it was started; say which flag differs instead of a tensor-size error."""
    saved = run_design(run)
    latent = trained_latent(run)
    if latent is not None and latent != config["latent"]:
        raise SystemExit(f"{run} was trained on {latent[0]}-channel {latent[1]}×{latent[1]} latents; resume it with "
                         "the --vae it was started with, or choose another --out.")
    for flag in saved:
        if saved[flag] != config[flag] and (flag != "repa" or not saved[flag] or not config[flag]):
            raise SystemExit(f"{run} was started with --{flag} {saved[flag]}, not {config[flag]}; "
                             f"pass --{flag} {saved[flag]} to resume it, or choose another --out.")


def scheduled_lr(step: int, args, warmup_from: int = 0) -> float:
    """The learning rate at ``step``: warmup over ``args.warmup`` steps from ``warmup_from`` (the step a
    run continued with ``--init-from`` starts at; 0 otherwise), then constant, then the cooldown.

    >>> scheduled_lr(10_000, argparse.Namespace(lr=1e-3, warmup=200, steps=14_000, cooldown=0.25), warmup_from=10_000)
    5e-06
    """
    return lr_at(step - warmup_from, args.lr, args.warmup) * cooldown_scale(step, args.steps, args.cooldown)


def cooldown_scale(step: int, total: int, cooldown: float) -> float:
    """Learning-rate factor of a warmup–stable–decay schedule: 1, then linear to 0 over the last ``cooldown`` of ``total`` steps."""
    if cooldown <= 0:
        return 1.0
    start = total * (1 - cooldown)
    return min(1.0, max(0.0, (total - step) / (total - start)))


def scene_weights(captions: list[str], shape_weights: dict[str, float]) -> torch.Tensor | None:
    """How often each bank scene is drawn: the mean weight of the shapes its caption names (1 for
    shapes not listed), or None when no shape is weighted (then draws stay uniform and a run's
    random stream is the one of runs that predate ``--shape-weight``).

        scene_weights(["a red cross and a blue circle", "a green square"], {"cross": 3.0})   # tensor([2., 1.])
    """
    if not shape_weights:
        return None
    from attnscope.datasets.shapes import SHAPES

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


def train(args) -> None:
    from transformers import CLIPTokenizer

    device = torch.device(args.device)
    vae = load_vae(args.vae).to(device)
    source = args.init_from or args.text_from
    if not (args.out / "tokenizer").is_dir():
        CLIPTokenizer.from_pretrained(source / "tokenizer").save_pretrained(args.out / "tokenizer")
    tokenizer = run_tokenizer(args.out)
    torch.manual_seed(args.seed)
    transformer = arch.shapes_sd3_transformer(args.patch, args.heads, args.blocks, arch.latent_shape(vae),
                                              args.dual_attention, args.qk_norm)
    if args.zero_init:
        adaln_zero(transformer)  # a resumed or --init-from run overwrites these weights below
    encoders = clip_encoders_from(args.text_from) if args.init_from is None else exported_encoders(args.init_from)
    modules = {"transformer": transformer, "text_encoder": encoders[0], "text_encoder_2": encoders[1]}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["latent"] = list(arch.latent_shape(vae))
    _check_same_design(args.out, config)  # before the bank and the REPA features, which take minutes
    token_grid = transformer.config.sample_size // transformer.config.patch_size
    for grid in args.repa_grid or []:
        if grid % token_grid:
            raise SystemExit(f"--repa-grid {grid} is not a multiple of the {token_grid}×{token_grid} token grid; "
                             f"pass {token_grid} or a multiple of it.")
    tap = repa.BlockTap(transformer, args.repa_block) if args.repa else nullcontext()
    bank_folder = Path(args.bank_from or args.out)
    bank, captions_bank = latent_bank(vae, bank_folder, args.seed, args.bank)
    if args.distill and not same_vae(vae, load_vae(args.distill_from)):
        raise SystemExit(f"--distill needs the teacher's latent space; pass --vae {args.distill_from}.")
    repa_latents = bank  # REPA's UNet reads the scenes in its own VAE's latents: encode them anew if ours differ
    repa_vae = load_vae(args.repa_from) if args.repa else None
    if repa_vae is not None and not same_vae(vae, repa_vae):
        repa_latents = lambda: latent_bank(repa_vae, bank_folder / "repa-bank", args.seed, args.bank)[0]  # noqa: E731
    del vae
    for module in modules.values():
        module.to(device)
    params = list(transformer.parameters())
    alignments = []  # (teacher features grouped per token, projector) for each --repa-grid
    if args.repa:
        for grid in args.repa_grid or [token_grid]:
            try:
                features = repa.cached_teacher_features(bank_folder, args.repa_from, repa_latents, captions_bank, tokenizer,
                                                        grid, args.seed, device=device, token_grid=token_grid)
            except ValueError as error:  # the UNet has no block at that grid
                raise SystemExit(str(error)) from None
            features = repa.per_token(features, token_grid)
            name = "repa_projector" if grid == token_grid else f"repa_projector_{grid}"
            modules[name] = head = repa.projector(transformer.inner_dim, features[0, 0].numel()).to(device)
            params += list(head.parameters())
            alignments.append((features, head))
    cell_weights = None  # per-cell loss weights of every bank scene: W on object cells, 1 elsewhere
    if args.object_weight != 1.0:
        cell_weights = 1 + (args.object_weight - 1) * object_cells(bank_folder, args.seed, args.bank, bank.shape[-1], captions_bank)
    teacher = FlowTeacher(args.distill_from, tokenizer, device, tuple(args.distill_sigmas)) if args.distill else None
    empty_ids = arch.token_ids(tokenizer, [""])  # the teacher reads token ids, not the cached features
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, args.beta2), weight_decay=0.01)
    emas = transformer_emas(transformer, args)
    state = load_checkpoint(args.out, modules, opt, emas)
    if state is None and args.init_from is not None:
        # continue from an exported pipeline (EMA weights); the optimizer starts afresh
        from diffusers import SD3Transformer2DModel

        exported = SD3Transformer2DModel.from_pretrained(args.init_from / "transformer", dtype=torch.float32)
        transformer.load_state_dict(exported.state_dict())
        emas = transformer_emas(transformer, args)
        done = json.loads((args.init_from / "attnscope_defaults.json").read_text()).get("trained_steps", 0)
        # the fresh optimizer warms up again, counted from the step the continuation starts at
        state = {"step": done, "seconds": 0.0, "log": [], "config": config, "init_from": str(args.init_from),
                 "warmup_from": done}
    state = state or {"step": 0, "seconds": 0.0, "log": [], "config": config}
    text_context, text_pooled = caption_features(encoders, tokenizer, captions_bank, device)
    start, step = time.time(), state["step"]
    if args.steps <= step:
        print(f"{args.out} has already trained {step} of --steps {args.steps}.", flush=True)
    bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS, image_tokens=token_grid**2)
    forward = compiled(transformer, args.compile)
    draw_weights = scene_weights(captions_bank, dict(args.shape_weight))
    stream_seed = args.seed if args.batch_seed is None else args.batch_seed
    while step < args.steps and time.time() - start < args.minutes * 60:
        gen = torch.Generator().manual_seed(stream_seed * 1_000_003 + step)
        index = draw_scenes(len(captions_bank), args.batch, gen, draw_weights)
        x0 = bank[index].to(device)
        dropped = torch.rand(args.batch, generator=gen) < args.uncond
        rows = torch.where(dropped, len(captions_bank), index)  # the last row holds the empty caption
        context, pooled = text_context[rows].to(device), text_pooled[rows].to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        sigma = torch.sigmoid(args.sigma_mean + args.sigma_std * torch.randn(args.batch, generator=gen))[:, None, None, None].to(device)
        noisy = noised_input(x0, noise, sigma, args.input_perturbation, gen)
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(step, args, state.get("warmup_from", 0))
        target = flow_target = noise - x0
        if teacher is not None:  # outside the zero-token mode: the UNet has no zero token
            ids = arch.token_ids(tokenizer, [captions_bank[i] for i in index.tolist()])
            ids[dropped] = empty_ids
            velocity, valid = teacher.velocity(noisy, sigma, ids)
            target = flow_target + args.distill * valid[:, None, None, None] * (velocity - flow_target)
        with bias, tap:
            pred = forward(noisy, encoder_hidden_states=context, pooled_projections=pooled,
                           timestep=sigma.flatten() * 1000).sample
            if cell_weights is None:
                loss = data_loss = F.mse_loss(pred, target)
            else:
                loss = data_loss = weighted_mse(pred, target, cell_weights[index].to(device))
            for features, head in alignments:
                loss = loss + args.repa * repa.alignment_loss(tap.hidden, features[index].to(device), head)
        if (step + 1) % LOG_EVERY == 0:  # logged: the plain flow loss, whatever the target and weights
            plain = data_loss if teacher is None and cell_weights is None else F.mse_loss(pred.detach(), flow_target)
            state.setdefault("flow_log", []).append([step + 1, round(plain.item(), 5)])
        step = optimizer_step("mmdit", loss, opt, params, modules, emas, state, step, start, args)
        if args.keep_from is not None and step >= args.keep_from and step % args.every == 0:
            keep_checkpoint(args.out, step)
    _save(args.out, modules, opt, state, step, start, emas)
    if step < args.steps and args.cooldown:
        print(f"Stopped by --minutes at step {step} of --steps {args.steps}, before the cooldown ended; "
              "run the same command again to finish it.", flush=True)


def compiled(transformer, mode: str | None):
    """``transformer`` compiled by ``torch.compile`` in ``mode`` ("default", "reduce-overhead", ...), or
    itself for None. The compiled module shares the transformer's weights, so checkpoints, EMAs and
    exports read the transformer as before; the zero-token mode and the REPA hook are traced into
    one graph for the run (tests/unit/test_mmdit_training.py).

        forward = compiled(transformer, "default")   # then forward(noisy, ...) instead of transformer(noisy, ...)
    """
    return transformer if mode is None else torch.compile(transformer, mode=mode)


def noised_input(x0, noise, sigma, perturbation: float = 0.0, generator=None):
    """The training input ``(1 - σ) x_0 + σ (ε + γ ξ)``; the target stays ``ε - x_0``.

    γ > 0 is input perturbation (Ning et al., 2023): the model learns to denoise inputs a little
    off the path it is asked to follow, as its own sampled images are, against exposure bias.
    γ = 0 draws nothing, so the random stream of a run without it is unchanged.

        noisy = noised_input(x0, torch.randn_like(x0), torch.full((len(x0), 1, 1, 1), 0.5), 0.1)
    """
    if perturbation:
        noise = noise + perturbation * torch.randn(x0.shape, generator=generator).to(noise.device)
    return (1 - sigma) * x0 + sigma * noise


def keep_checkpoint(run, step: int) -> Path:
    """Copy the checkpoint just saved, with the tokenizer, to ``run/keep/step-NNNNN``: a run folder
    of its own that ``export`` and :func:`build_pipeline` read, so checkpoints along one run
    (the cooldown, say) can be gated side by side.

    >>> keep_checkpoint("runs/mmdit", 9500)  # doctest: +SKIP
    PosixPath('runs/mmdit/keep/step-09500')
    """
    import shutil

    run = Path(run)
    kept = run / "keep" / f"step-{step:05d}"
    with staged_folder(kept) as staging:  # a copy cut short never looks like a checkpoint
        for name in ("checkpoint.json", "checkpoint.safetensors"):
            shutil.copy2(run / name, staging / name)
        shutil.copytree(run / "tokenizer", staging / "tokenizer")
    return kept


def transformer_emas(transformer, args) -> dict:
    """The transformer's EMA with ``--ema``, and one more for each ``--extra-ema`` decay."""
    emas = {"transformer": EMA(transformer, args.ema)}
    emas.update({ema_name("transformer", decay): EMA(transformer, decay) for decay in args.extra_ema})
    return emas


def build_pipeline(vae_run, run, use_ema: bool | float = True):
    """The trained MM-DiT as a stock ``StableDiffusion3Pipeline``: EMA weights unless ``use_ema=False``;
    ``use_ema=0.9995``: the EMA kept with that decay by ``--extra-ema``."""
    from diffusers import StableDiffusion3Pipeline

    design = run_design(run)
    if not design:
        raise FileNotFoundError(f"No MM-DiT checkpoint in {run}.")
    vae = load_vae(vae_run)
    vae.register_to_config(shift_factor=0.0)
    trained_on = trained_latent(run)
    if list(arch.latent_shape(vae)) != trained_on:
        raise SystemExit(f"{run} was trained on {trained_on[0]}×{trained_on[1]}×{trained_on[1]} latents, but the VAE in "
                         f"{vae_run} makes {arch.latent_shape(vae)}; pass the --vae the run was trained with.")
    tokenizer = run_tokenizer(run)
    transformer = arch.shapes_sd3_transformer(design["patch"], design["heads"], design["blocks"], arch.latent_shape(vae),
                                              design["dual_attention"], design["qk_norm"])
    encoders = [arch.shapes_sd3_text_encoder(len(tokenizer)) for _ in range(2)]
    state = load_checkpoint(run, {"transformer": transformer, "text_encoder": encoders[0],
                                  "text_encoder_2": encoders[1]}, use_ema=use_ema)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=arch.shapes_flow_scheduler(), vae=vae,
        text_encoder=encoders[0].eval(), tokenizer=tokenizer, text_encoder_2=encoders[1].eval(),
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None,
    )
    return pipe, state


def _shape_weight(text: str) -> tuple[str, float]:
    """``SHAPE=W`` for ``--shape-weight``; argparse turns the ValueError into a one-line usage error."""
    from attnscope.datasets.shapes import SHAPES

    shape, _, weight = text.partition("=")
    if shape not in SHAPES or not weight:
        raise argparse.ArgumentTypeError(f"expected SHAPE=W with SHAPE one of {', '.join(SHAPES)}, not {text!r}")
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"the weight in {text!r} must be a positive number")
    return shape, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text-from", type=Path, default=WEIGHTS / "shapes-unet",
                        help="Stable Diffusion folder whose text encoder (and tokenizer) the MM-DiT conditions on")
    parser.add_argument("--init-from", type=Path, help="exported MM-DiT folder to continue from (fresh optimizer, warmed up again from its step)")
    parser.add_argument("--bank-from", type=Path, help="reuse the latent bank cached in this run folder")
    parser.add_argument("--bank", type=int, default=24_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (design 3 first ran at 6e-4; docs/models.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-seed", type=int, help="seed of the batch stream alone (scenes, noise, σ, dropped "
                        "captions; default --seed): a run resumed with another one finishes on other batches from "
                        "the same weights, which measures how much its end alone varies")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beta2", type=float, default=0.999,
                        help="AdamW's second-moment decay (a resumed run keeps the one it started with)")
    parser.add_argument("--keep-from", type=int, metavar="STEP",
                        help="from this step on, keep a copy of every checkpoint in OUT/keep/step-NNNNN (a run folder "
                             "that export reads) to gate checkpoints along the run; default: keep only the last")
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--extra-ema", type=float, nargs="+", default=[], metavar="DECAY",
                        help="also keep EMAs with these decays (export --ema-decay picks one); added on resume, "
                             "they start from the main EMA")
    parser.add_argument("--uncond", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--cooldown", type=float, default=0.0,
                        help="fraction of --steps over which the learning rate decays linearly to 0 at the end (needs --steps)")
    parser.add_argument("--sigma-mean", type=float, default=0.0,
                        help="location of the logit-normal σ distribution (SD3's m; the shipped run: 0.3 with --sigma-std 0.8, more samples at σ 0.4–0.8, docs/models.md)")
    parser.add_argument("--sigma-std", type=float, default=1.0, help="scale of the logit-normal σ distribution (SD3's s)")
    parser.add_argument("--input-perturbation", type=float, default=0.0, metavar="GAMMA",
                        help="extra input noise γ against exposure bias (Ning et al. 2023 use 0.1; 0: off; see noised_input)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (batches are drawn on the CPU, so runs match across devices)")
    parser.add_argument("--patch", type=int, default=arch.SD3_PATCH, help="latent pixels per image token (on the shipped VAE's 16×16 latents, 1: 16×16 tokens, 2: 8×8)")
    parser.add_argument("--heads", type=int, default=arch.SD3_HEADS, help=f"attention heads of width {arch.SD3_HEAD_DIM}")
    parser.add_argument("--blocks", type=int, default=arch.SD3_BLOCKS, help="joint-attention blocks")
    parser.add_argument("--dual-attention", type=int, default=0, metavar="N",
                        help="give the first N blocks a second, image-only attention (SD3.5's MMDiT-X; 0: SD3's blocks)")
    parser.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="compile the transformer with torch.compile in this mode (bare flag: default; on a CPU it "
                             "saves a few per cent of the step after a minute or two of compiling; reduce-overhead "
                             "adds CUDA graphs against the launch-bound GPU step; benchmarks/mmdit_compile.py)")
    parser.add_argument("--qk-norm", action="store_true", help="RMS-normalise queries and keys (as SD3.5 does)")
    parser.add_argument("--repa", type=float, default=0.5, help="weight of the REPA alignment loss (0: off; 0.5 as in REPA's paper)")
    parser.add_argument("--repa-block", type=int, default=2, help="the block whose image tokens are aligned")
    parser.add_argument("--repa-grid", type=int, action="append", metavar="G",
                        help="align with the UNet's up-path features at G×G (repeatable; default: the token grid). A grid "
                             "finer than the tokens aligns each token with every cell under it, each grid weighted --repa")
    parser.add_argument("--repa-from", type=Path, default=WEIGHTS / "shapes-unet", help="Stable Diffusion folder whose UNet is the encoder")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="share of the teacher's velocity in the regression target (0: the data target only; 1: the teacher's; see distill.py)")
    parser.add_argument("--distill-from", type=Path, default=WEIGHTS / "shapes-unet",
                        help="Stable Diffusion folder (ε-prediction UNet, same tokenizer) whose denoiser is the teacher")
    parser.add_argument("--distill-sigmas", type=float, nargs=2, default=SIGMA_WINDOW, metavar=("LOW", "HIGH"),
                        help="flow levels σ at which the teacher is used (elsewhere the data target)")
    parser.add_argument("--object-weight", type=float, default=1.0, metavar="W",
                        help="weight of the flow loss on latent cells that touch an object, against 1 elsewhere (object_weight.py; 1: plain loss)")
    parser.add_argument("--shape-weight", type=_shape_weight, action="append", default=[], metavar="SHAPE=W",
                        help="draw bank scenes naming SHAPE W times as often (repeatable; a scene's weight is the mean "
                             "over its shapes; e.g. --shape-weight cross=2 for the shapes the MM-DiT draws worst)")
    parser.add_argument("--zero-init", action=argparse.BooleanOptionalAction, default=True,
                        help="DiT's adaLN-Zero initialisation (see adaln_zero)")
    args = parser.parse_args(argv)
    if args.cooldown and args.steps == parser.get_default("steps"):
        parser.error("--cooldown needs --steps, the run's planned total, to know where the decay ends")
    if not 0 <= args.cooldown <= 1:
        parser.error(f"--cooldown is a fraction of --steps in [0, 1], not {args.cooldown}")
    if args.input_perturbation < 0:
        parser.error(f"--input-perturbation is a noise scale γ and must be 0 (off) or positive, not {args.input_perturbation}")
    if args.sigma_std <= 0:
        parser.error(f"--sigma-std is the spread of the logit-normal σ distribution and must be positive, not {args.sigma_std}")
    if not 0 <= args.distill <= 1:
        parser.error(f"--distill is the teacher's share of the target in [0, 1], not {args.distill}")
    if args.repa_grid and not args.repa:
        parser.error("--repa-grid chooses the REPA targets; it needs --repa above 0")
    if args.repa_grid and len(set(args.repa_grid)) != len(args.repa_grid):
        parser.error(f"--repa-grid is given twice for one grid ({args.repa_grid}); pass each grid once")
    if not 0 <= args.dual_attention <= args.blocks:
        parser.error(f"--dual-attention {args.dual_attention} must be between 0 and --blocks ({args.blocks})")
    if args.object_weight <= 0:
        parser.error(f"--object-weight is the loss weight of object cells against 1 for the rest and must be positive, not {args.object_weight}")
    torch.set_num_threads(args.threads)
    train(args)


if __name__ == "__main__":
    main()
