"""Attention on real images: encode, noise to a level, one denoising pass per noise draw.

The images are VAE-encoded, noised to ``noise`` (a fraction of the noise schedule: the UNet's
timestep ``noise · (T - 1)``, flow matching's ``σ = noise``), and the denoiser runs once per noise
draw on the prompt, inside one trace. All draws belong to one generation (the prompt is encoded
once; every draw is a further call at the same timestep), so any method averages them as it averages
denoising calls. The pass stops after the last block that the trace reads (DAAM's layers,
ConceptAttention's double-stream blocks): later blocks would only cost time.

Example:
    >>> from attnscope.realimages import trace_images
    >>> tc = trace_images(pipe, [image], concepts=["cat", "sky", "background"], noise=0.5, draws=2)  # doctest: +SKIP
    >>> tc.concept_attention().segment(0)                                                  # doctest: +SKIP
    >>> trace_images(pipe, [image], "a cat on the grass", noise=0.5).daam().word("cat")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


class _StopPass(Exception):
    """Raised after the last block a trace reads, to end a denoiser pass early."""


def as_pixels(images: Any) -> torch.Tensor:
    """PIL images, or uint8 arrays / tensors ``(H, W, 3)`` or ``(n, H, W, 3)`` → uint8 ``(n, H, W, 3)``."""
    if hasattr(images, "convert"):
        images = [images]
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(i.convert("RGB") if hasattr(i, "convert") else i) for i in images])
    array = torch.as_tensor(np.asarray(images))
    if array.dim() == 3:
        array = array[None]
    if array.dim() != 4 or array.shape[-1] != 3 or array.dtype != torch.uint8:
        raise ValueError(f"Images must be RGB uint8 (H, W, 3) or (n, H, W, 3), or PIL images; got "
                         f"{tuple(array.shape)} {array.dtype}.")
    return array


def check_noise(noise: float) -> float:
    if not 0.0 < float(noise) < 1.0:
        raise ValueError(f"noise={noise} must lie strictly between 0 and 1 (a fraction of the noise schedule, e.g. 0.5).")
    return float(noise)


def trace_images(pipe, images: Any, prompt: str | Sequence[str] = "", *, noise: float = 0.5, draws: int = 1,
                 seed: int = 0, stop_early: bool = True, **trace_options):
    """Trace one denoising pass per noise draw on real ``images``; returns the finished trace.

    Args:
        pipe: a pipeline with an adapter that can encode images (SD 1.x/2.x, SDXL, SD3, SD3.5, Flux).
        images: PIL images or uint8 ``(n, H, W, 3)``; sizes must suit the pipeline (multiples of
            ``adapter.size_multiple()``).
        prompt: one prompt for every image, or one per image (ConceptAttention needs none).
        noise: noise level in (0, 1); draws: noise draws averaged; seed: seed of the first draw.
        stop_early: end each pass after the last block the trace reads.
        trace_options: :func:`attnscope.trace` options (``concepts=``, ``layers=``, ``heads=`` …).
    """
    from .adapters import adapter_for
    from .core.trace import trace

    noise = check_noise(noise)
    if int(draws) < 1:
        raise ValueError(f"draws={draws} must be at least 1.")
    pixels = as_pixels(images)
    n, height, width, _ = pixels.shape
    adapter = adapter_for(pipe)
    multiple = adapter.size_multiple()
    if height % multiple or width % multiple:
        raise ValueError(f"Images of {height}x{width} do not suit this model; resize them to multiples of {multiple}.")
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} images; give one prompt, or one per image.")
    scaled = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = adapter.encode_images(scaled)
    tc = trace(pipe, cfg=False, **trace_options)
    with tc:
        condition = adapter.condition(prompts)
        handle = _stop_after_last_read(tc) if stop_early else None
        try:
            for d in range(int(draws)):
                draw = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + d))
                noisy, timestep = adapter.noise_latents(latents, draw, noise)
                try:
                    adapter.denoise_call(noisy, timestep, condition)
                except _StopPass:
                    pass
        finally:
            if handle is not None:
                handle.remove()
    gen = tc.generation()
    gen.images = pixels.clone()
    gen.extras["real_images"] = {"noise": noise, "draws": int(draws), "seed": seed, "prompts": prompts}
    return tc


def _stop_after_last_read(tc):
    """A forward hook on the last module the trace (or an extension) reads that ends the pass."""
    order = [info.name for info in tc.model_layers]
    needed = {l.name for l in tc.layers}
    for extension in tc.extensions:
        needed |= {info.name for info, _ in getattr(extension, "blocks", [])}
    if not needed:
        return None
    last = max(needed, key=order.index)
    module = dict((info.name, m) for info, m in tc.adapter.attention_layers())[last]

    def stop(*_):
        raise _StopPass

    return module.register_forward_hook(stop)
