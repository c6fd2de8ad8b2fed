"""Distillation targets for the tiny MM-DiT: the shipped UNet's denoiser, read as a rectified-flow velocity.

The MM-DiT learns from the flow objective ``v = ε − x_0`` with ``x_σ = (1 − σ) x_0 + σ ε``. For a
given ``x_σ`` that target is noisy: ``x_0`` is one scene out of all scenes the noisy latent could
come from. A trained denoiser already estimates the average over them, ``E[ε − x_0 | x_σ]``, so
regressing on its prediction instead trains the same optimum with far less gradient noise
(knowledge distillation). The teacher is the shipped ShapesWorld UNet (ε-prediction, DDPM
``alphas_cumprod``), trained on the same latent bank; both use the same tokenizer.

The two noisings are the same up to a scale: ``x_σ / s`` with ``s = sqrt((1 − σ)² + σ²)`` is a DDPM
sample with ``sqrt(ᾱ) = (1 − σ) / s``. The UNet's timestep for that ``ᾱ`` is interpolated on
``log ᾱ`` (UNets take fractional timesteps), and its ``ε̂`` gives ``v̂ = (ε̂ − x_σ) / (1 − σ)``.
The teacher's error grows at both ends of the schedule (its ε̂ error is multiplied by
``1 / (1 − σ)``, and min-SNR training gave little weight to the lowest noise levels), so it is used
only for σ in ``SIGMA_WINDOW``, where it measured better than the MM-DiT it teaches; elsewhere (and
always beyond its last training timestep, σ ≳ 0.94) a sample keeps the data target.

    python -m training.train_mmdit --vae src/attnscope/weights/shapes-unet --out runs/mmdit9 --distill 1.0

Example:
    >>> teacher = FlowTeacher(WEIGHTS / "shapes-unet", tokenizer)                 # doctest: +SKIP
    >>> v, valid = teacher.velocity(noisy, sigma, ids)                             # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

#: σ range in which the shipped UNet's velocity was closer to the data target than the shipped MM-DiT's
#: (``benchmarks/teacher_velocity_error.py``, docs/models.md); outside it the data target is kept
SIGMA_WINDOW = (0.1, 0.85)


def ddpm_timestep(alphas_cumprod: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional DDPM timesteps whose ``ᾱ`` equals the signal share of flow level ``σ``, and whether each is in range
    (not noisier than the last timestep).

    ``alphas_cumprod`` must fall strictly with the timestep (every DDPM schedule does).
    """
    sigma = sigma.double()
    alpha_bar = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2)
    grid = -torch.log(alphas_cumprod.double())                    # rises with the timestep
    level = -torch.log(alpha_bar.clamp_min(torch.finfo(torch.float64).tiny))
    valid = level <= grid[-1]  # below the first timestep the clamp changes ᾱ by < 0.1 %
    level = level.clamp(grid[0], grid[-1])
    upper = torch.searchsorted(grid, level).clamp(1, len(grid) - 1)
    lower = upper - 1
    frac = (level - grid[lower]) / (grid[upper] - grid[lower])
    return (lower + frac).float(), valid


def flow_velocity(epsilon: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity ``ε − x_0`` implied by a noise estimate ``ε̂`` at ``x_σ``: ``(ε̂ − x_σ) / (1 − σ)``."""
    return (epsilon - noisy) / (1 - sigma)


class FlowTeacher:
    """A Stable Diffusion folder's UNet and text encoder, frozen, answering with flow velocities.

    ``tokenizer`` is the student's; it must be the teacher's own (same vocabulary), since the teacher
    reads the student's token ids.
    """

    def __init__(self, folder: Path, tokenizer, device="cpu", window: tuple[float, float] = SIGMA_WINDOW):
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no unet/; --distill-from needs a Stable Diffusion folder such as the shipped shapes-unet.")
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"{folder}'s UNet predicts {scheduler.config.prediction_type!r}; the distillation teacher must predict 'epsilon'.")
        if CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{folder}'s tokenizer differs from the run's; pass the folder the run's text encoders came from (--text-from).")
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).eval().requires_grad_(False).to(device)
        self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval().requires_grad_(False).to(device)
        self.alphas_cumprod, self.window = scheduler.alphas_cumprod, window

    @torch.no_grad()
    def velocity(self, noisy: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher velocities for flow samples ``noisy`` at levels ``sigma`` ``(B, 1, 1, 1)``, and a ``(B,)`` mask of
        the samples to use them for (σ inside the window and the teacher's schedule)."""
        levels = sigma.flatten().cpu()
        timestep, valid = ddpm_timestep(self.alphas_cumprod, levels)
        low, high = self.window
        valid &= (levels >= low) & (levels <= high)
        scale = ((1 - sigma) ** 2 + sigma ** 2).sqrt()
        context = self.text_encoder(ids.to(noisy.device))[0]
        epsilon = self.unet(noisy / scale, timestep.to(noisy.device), encoder_hidden_states=context).sample
        return flow_velocity(epsilon, noisy, sigma), valid.to(noisy.device)
