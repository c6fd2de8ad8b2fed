"""HRV-weighted Attend-and-Excite: nudge the latents until every subject word gets attention.

Attend-and-Excite (Chefer et al., 2023) fights catastrophic neglect ("a cat and a frog" drawing only
the cat): during the first steps it moves the latents along the gradient of
``max_s (1 − max_pixels map_s)`` so that each subject's attention map has a strong peak. The HRV
paper's variant builds each subject's map as the **HRV-weighted mean over all heads** (weights: the
subject's concept row) instead of the plain mean over the 16×16 layers.

Each map: every cross-attention layer's conditional attention, heads weighted by the subject's
HRV row, resized (bilinear) to the latent grid ÷ ``grid_factor`` and summed; then A&E's reading —
softmax over the prompt's word tokens at temperature 1/100, the subject's tokens' mean, a 3×3
Gaussian (σ 0.5), the maximum. Updates happen between steps (``callback_on_step_end``); the first
step's update runs before generation, on conditioning read by a probe call that stops at the
first denoiser call.

Example:
    >>> out = attend_and_excite(pipe, "a cat and a frog", ["cat", "frog"], hrv, seed=0,
    ...                         num_inference_steps=50)                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..control.hooks import CallState, LayerHooks, SDPACall, model_layers
from ..core.tokens import find_word, words_from_tokens
from .vectors import HeadRelevance

# Attend-and-Excite's published settings for 50 steps, as fractions of the run where they are steps.
STEP_SIZE = 20.0                 # the latent update's scale factor
STEP_DECAY = (1.0, 0.5)          # step size × sqrt(linspace(1.0, 0.5, steps))
UNTIL = 0.5                      # update during the first 25 of 50 steps
REFINE = {0.0: 0.05, 0.2: 0.5, 0.4: 0.8}   # at steps 0, 10, 20 of 50: refine until every peak ≥ this
MAX_REFINE = 20                  # refinement iterations at most
TEMPERATURE = 100.0              # token softmax sharpness
SMOOTH_SIZE, SMOOTH_SIGMA = 3, 0.5
GRID_FACTOR = 4                  # maps on the latent grid ÷ 4 (SD's 16×16)


class _Probed(Exception):
    """Stops the probe call at its first denoiser call."""


def _conditional(value, rows: slice, batch: int):
    if torch.is_tensor(value) and value.dim() and value.shape[0] == batch:
        return value[rows].detach()
    if isinstance(value, dict):
        return {k: _conditional(v, rows, batch) for k, v in value.items()}
    return value


def _gaussian(device) -> torch.Tensor:
    x = torch.arange(SMOOTH_SIZE, dtype=torch.float32, device=device) - (SMOOTH_SIZE - 1) / 2
    g = torch.exp(-(x**2) / (2 * SMOOTH_SIGMA**2))
    kernel = torch.outer(g, g)
    return (kernel / kernel.sum())[None, None]


class _Maps:
    """Grad-carrying HRV-weighted token maps ``(subjects, tokens, gh, gw)`` summed over layers."""

    def __init__(self, weights: torch.Tensor, grid: tuple[int, int], adapter):
        self.weights, self.grid, self.adapter = weights, grid, adapter
        self.total: torch.Tensor | None = None

    def __call__(self, layer, state: CallState, call: SDPACall):
        probs = call.probabilities(0)                                      # (H, P, K)
        w = self.weights[:, layer.head_offset : layer.head_offset + layer.heads].to(probs.device)
        mixed = torch.einsum("hpk,sh->skp", probs, w)                      # (S, K, P)
        h, wd, _ = self.adapter.layer_grid(layer, probs.shape[1], state.latent_hw)
        mixed = mixed.reshape(mixed.shape[0], mixed.shape[1], h, wd)
        mixed = F.interpolate(mixed, size=self.grid, mode="bilinear", align_corners=False)
        self.total = mixed if self.total is None else self.total + mixed
        return None


def attend_and_excite(pipe: Any, prompt: str, words: Sequence[str], hrv: HeadRelevance, *,
                      concepts: dict | None = None, seed: int = 0, step_size: float = STEP_SIZE,
                      until: float = UNTIL, refine: dict | None = None, grid_factor: int = GRID_FACTOR,
                      **pipe_kwargs):
    """Generate ``prompt`` with HRV-weighted Attend-and-Excite on the subject ``words``.

    Args:
        words: the subjects that must appear (words of the prompt).
        concepts: ``{word: concept}``; default: the concept whose example words hold the word.
        seed: the initial noise's seed (the noise is made here, as the pipeline would).
        until: fraction of the steps during which latents are updated.
        refine: ``{fraction of the run: peak target}`` for iterative refinement (A&E's by default).
        pipe_kwargs: passed to the pipeline (``num_inference_steps``, ``guidance_scale`` …).
    Returns the pipeline's output.
    """
    from diffusers.utils.torch_utils import randn_tensor

    adapter, found = model_layers(pipe)
    hrv.check_layers([info for info, _ in found])
    tokenizer = adapter.text_encoder()[1]
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    prompt_words = words_from_tokens(tokenizer.convert_ids_to_tokens(ids), set(tokenizer.all_special_tokens))
    if not words:
        raise ValueError("words= is empty; name the subjects of the prompt that must appear.")
    positions = [[t for w in find_word(prompt_words, word) for t in w.tokens] for word in words]
    first, last = min(t for w in prompt_words for t in w.tokens), max(t for w in prompt_words for t in w.tokens)
    concepts = dict(concepts or {})
    weights = torch.stack([hrv.weights(concepts.get(w) or hrv.concept_of(w)).float() for w in words])
    weights = weights / weights.sum(dim=1, keepdim=True)

    conditioning = _probe(pipe, adapter, prompt, pipe_kwargs)
    scheduler = pipe.scheduler
    timesteps, sample = list(scheduler.timesteps), conditioning.pop("sample")
    grid = tuple(max(1, n // grid_factor) for n in sample.shape[-2:])
    decay = np.sqrt(np.linspace(STEP_DECAY[0], STEP_DECAY[1], len(timesteps)))
    refine_at = {int(round(f * len(timesteps))): target for f, target in (refine or REFINE).items()}
    smooth = _gaussian(sample.device)

    def loss_of(latents: torch.Tensor, t) -> torch.Tensor:
        maps = _Maps(weights, grid, adapter)
        with LayerHooks(pipe, maps, cfg=False, adapter=adapter):
            pipe.unet(scheduler.scale_model_input(latents, t), t, **conditioning)
        text = maps.total[:, first : last + 1].mul(TEMPERATURE).softmax(dim=1)   # (S, tokens, gh, gw)
        peaks = []
        for s, tokens in enumerate(positions):
            m = text[s, [p - first for p in tokens]].mean(0)[None, None]
            m = F.conv2d(F.pad(m, (1, 1, 1, 1), mode="reflect"), smooth.to(m))
            peaks.append(m.max())
        return torch.stack([1.0 - p for p in peaks]).clamp(min=0).max()

    def excite(latents: torch.Tensor, i: int) -> torch.Tensor:
        if i >= until * len(timesteps):
            return latents
        t, size = timesteps[i], step_size * float(decay[i])
        with torch.enable_grad():
            z = latents.detach().clone().requires_grad_(True)
            loss = loss_of(z, t)
            rounds = 0
            while i in refine_at and loss > 1.0 - refine_at[i] and rounds < MAX_REFINE:
                z = (z - size * torch.autograd.grad(loss, z)[0]).detach().requires_grad_(True)
                loss, rounds = loss_of(z, t), rounds + 1
            if loss > 0:
                z = z - size * torch.autograd.grad(loss, z)[0]
        return z.detach()

    def on_step_end(pipeline, i, t, tensors):
        return {"latents": excite(tensors["latents"], i + 1) if i + 1 < len(timesteps) else tensors["latents"]}

    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = randn_tensor(tuple(sample.shape), generator=generator, device=sample.device, dtype=sample.dtype)
    sigma = scheduler.init_noise_sigma
    latents = excite(noise * sigma, 0)
    return pipe(prompt, latents=latents / sigma, callback_on_step_end=on_step_end, **pipe_kwargs)


def _probe(pipe, adapter, prompt: str, pipe_kwargs: dict) -> dict:
    """The conditional half of the first denoiser call's inputs (``sample`` = its latent shape)."""
    captured: dict = {}

    def hook(module, args, kwargs):
        sample, _ = adapter.denoiser_inputs(args, kwargs)
        cfg = bool(adapter.uses_cfg())
        batch = int(sample.shape[0])
        rows = slice(batch // 2, batch) if cfg else slice(0, batch)
        captured.update({k: _conditional(v, rows, batch) for k, v in kwargs.items() if k not in ("sample", "timestep")})
        if len(args) > 2:
            captured["encoder_hidden_states"] = _conditional(args[2], rows, batch)
        captured["sample"] = sample[rows].detach()
        captured["return_dict"] = False
        raise _Probed

    handle = adapter.denoiser().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(prompt, **pipe_kwargs)
    except _Probed:
        pass
    finally:
        handle.remove()
    if "sample" not in captured:
        raise RuntimeError("The pipeline never called its denoiser; Attend-and-Excite needs at least one step.")
    return captured
