"""Which noise levels does the MM-DiT get wrong? Sample with the UNet above a switch level σ_s and the
MM-DiT below it (and the other way round), and score every mix with the quality gate.

Both shipped models share one VAE, so one Euler flow sampler can ask either for the velocity at
any step: the MM-DiT directly, the UNet through its ε̂ read as a flow velocity (a flow sample
``x_σ`` scaled by ``1 / sqrt((1 − σ)² + σ²)`` is a DDPM sample at the fractional timestep of the same
signal share; above the UNet's last training timestep, σ ≳ 0.94, through its ``x̂_0`` at that timestep). Each model keeps
its own guidance scale. If UNet-then-MM-DiT passes far more often than MM-DiT-then-UNet, the
MM-DiT fails at laying out the scene (high σ); the other way round, at drawing it (low σ).

    python -m training.benchmarks.hybrid_sampling --n 60
    python -m training.benchmarks.hybrid_sampling --guidance-schedules 7:7:0 10:4:0.4   # MM-DiT alone, guidance HIGH above σ_s, LOW below

Prints a Markdown table of the gate for each switch level and order (or each guidance schedule).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from training.errors import TrainingError, run_command


def ddpm_timestep(alphas_cumprod: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional DDPM timesteps whose ``ᾱ`` equals the signal share of flow level ``σ``, and whether
    each is in the schedule (not noisier than its last timestep); interpolated on ``log ᾱ``."""
    sigma = sigma.double()
    alpha_bar = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2)
    grid = -torch.log(alphas_cumprod.double())  # rises with the timestep
    level = -torch.log(alpha_bar.clamp_min(torch.finfo(torch.float64).tiny))
    valid = level <= grid[-1]
    level = level.clamp(grid[0], grid[-1])
    upper = torch.searchsorted(grid, level).clamp(1, len(grid) - 1)
    lower = upper - 1
    return (lower + (level - grid[lower]) / (grid[upper] - grid[lower])).float(), valid


class UNetVelocity:
    """The UNet's classifier-free-guided velocity at flow level σ (any σ in (0, 1])."""

    def __init__(self, folder, tokenizer, guidance: float):
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        folder = Path(folder)
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval()
        self.alphas_cumprod = DDIMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
        self.tokenizer, self.guidance = tokenizer, guidance

    def prepare(self, captions):
        from training import architectures as arch

        ids = arch.token_ids(self.tokenizer, captions + [""] * len(captions))
        with torch.no_grad():
            self.context = self.text_encoder(ids)[0]

    @torch.no_grad()
    def __call__(self, x, sigma: float):
        alphas = self.alphas_cumprod
        timestep, valid = ddpm_timestep(alphas, torch.tensor([sigma]))
        alpha_bar = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2) if valid else float(alphas[-1])
        scaled = x / ((1 - sigma) ** 2 + sigma ** 2) ** 0.5
        both = torch.cat([scaled, scaled])
        eps = self.unet(both, timestep.expand(len(both)), encoder_hidden_states=self.context).sample
        cond, uncond = eps.chunk(2)
        eps = uncond + self.guidance * (cond - uncond)
        x0 = (scaled - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar ** 0.5
        return (x - x0) / sigma


class MMDiTVelocity:
    """The MM-DiT's guided velocity, through the stock SD3 pipeline's own prompt encoding."""

    def __init__(self, pipe, guidance: float):
        self.pipe, self.guidance = pipe, guidance

    def prepare(self, captions):
        with torch.no_grad():
            embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
                captions, captions, captions, negative_prompt=[""] * len(captions), do_classifier_free_guidance=True)
        self.context, self.pooled = torch.cat([embeds, negative]), torch.cat([pooled, negative_pooled])

    @torch.no_grad()
    def __call__(self, x, sigma: float):
        both = torch.cat([x, x])
        v = self.pipe.transformer(both, encoder_hidden_states=self.context, pooled_projections=self.pooled,
                                  timestep=torch.full((len(both),), sigma * 1000)).sample
        cond, uncond = v.chunk(2)
        return uncond + self.guidance * (cond - uncond)


def sample(models: dict, order: str, switch: float, noise, steps: int):
    """Euler steps on SD3's σ grid (shift 1); ``order`` says which model runs above ``switch``."""
    first, second = order.split("-then-")
    sigmas = list(np.linspace(1.0, 1 / 1000, steps)) + [0.0]
    x = noise.clone()
    for sigma, following in zip(sigmas[:-1], sigmas[1:]):
        model = models[first] if sigma > switch else models[second]
        x = x + (following - sigma) * model(x, float(sigma))
    return x


def run(argv=None) -> None:
    from diffusers import DiffusionPipeline

    from attnscope.datasets.detect import detect, matches_caption
    from attnscope.datasets.shapes import make_scenes, tensor_pixels
    from attnscope.pipelines import WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmdit", default=str(WEIGHTS / "shapes-mmdit"))
    parser.add_argument("--unet", default=str(WEIGHTS / "shapes-unet"))
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--switches", type=float, nargs="+", default=[0.8, 0.6, 0.4, 0.2])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--guidance-schedules", nargs="+", metavar="HIGH:LOW:SWITCH",
                        help="instead of mixing models, sample the MM-DiT alone with guidance HIGH above σ SWITCH and LOW below")
    args = parser.parse_args(argv)
    schedules = [_parse_schedule(text) for text in args.guidance_schedules or []]  # refuse a typo before loading
    torch.set_num_threads(2)
    pipe = DiffusionPipeline.from_pretrained(args.mmdit, text_encoder_3=None, tokenizer_3=None)
    if pipe.vae.config.shift_factor not in (None, 0.0):
        raise TrainingError("This check assumes the MM-DiT's VAE has no shift factor, like the shipped one; pass such an --mmdit.")
    scenes = make_scenes(0, args.n, split="test", size=64)
    noise = torch.randn((args.n, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    if schedules:
        plans = [({"high": MMDiTVelocity(pipe, high), "low": MMDiTVelocity(pipe, low)}, "high-then-low", switch,
                  (f"{high:g}", f"{low:g}" if switch > 0 else "—", f"{switch:g}")) for high, low, switch in schedules]
        print(f"{args.n} test-split captions, {args.steps} Euler steps, the MM-DiT alone\n")
        print("| guidance above σ_s | below σ_s | σ_s | gate |\n|---|---|---|---|")
    else:
        models = {"unet": UNetVelocity(args.unet, pipe.tokenizer, 7.5), "mmdit": MMDiTVelocity(pipe, 7.0)}
        runs = [("mmdit-then-unet", 0.0), ("unet-then-mmdit", 0.0)]
        runs += [(order, s) for s in args.switches for order in ("unet-then-mmdit", "mmdit-then-unet")]
        plans = [(models, order, switch, _mix_label(order, switch)) for order, switch in runs]
        print(f"{args.n} test-split captions, {args.steps} Euler steps, guidance UNet 7.5 / MM-DiT 7\n")
        print("| above σ_s | below σ_s | σ_s | gate |\n|---|---|---|---|")
    for models, order, switch, label in plans:
        passed = 0
        for start in range(0, args.n, args.batch):
            part = scenes[start:start + args.batch]
            for model in models.values():
                model.prepare([s.caption for s in part])
            latents = sample(models, order, switch, noise[start:start + len(part)], args.steps)
            with torch.no_grad():
                images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            passed += sum(matches_caption(detect(p), s.objects) for p, s in zip(tensor_pixels(images), part))
        print(f"| {label[0]} | {label[1]} | {label[2]} | {100 * passed / args.n:.1f} % |", flush=True)


def _mix_label(order: str, switch: float) -> tuple:
    """Table cells for a model mix: ``("unet", "mmdit", "0.4")``; one model throughout when ``switch`` is 0."""
    first, second = order.split("-then-")
    return (first, second, f"{switch:.1f}") if switch > 0 else (first, "—", "0")


def _parse_schedule(text: str) -> tuple:
    """``"10:4:0.4"`` → ``(10.0, 4.0, 0.4)``: guidance 10 above σ 0.4 and 4 below."""
    try:
        high, low, switch = (float(part) for part in text.split(":"))
    except ValueError:
        raise TrainingError(f"--guidance-schedules takes HIGH:LOW:SWITCH, e.g. 10:4:0.4 (got {text!r}).") from None
    return high, low, switch


def main(argv=None) -> None:
    run_command(run, None, argv)


if __name__ == "__main__":
    main()
