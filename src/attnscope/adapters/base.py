"""What a denoiser family must tell the tracing core.

One adapter per denoiser family (UNet today; SD3 and Flux MM-DiT next). An adapter knows which
modules are the attention layers to read, in execution order, where the prompt's token ids come
from, whether a call carries a classifier-free-guidance batch, how to read the latent shape from
the denoiser's inputs and each layer's pixel grid from its query count, what to tell a user whose
attention processor cannot be read, and how to run one denoising pass on an image (for the
benchmark's real-image protocol). Everything else — hooks, streaming stores, methods — is shared.

To add a family, subclass :class:`Adapter`, implement the abstract parts and decorate the class
with :func:`attnscope.adapters.register_adapter`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.layers import LayerInfo


class Adapter:
    """Base class of per-architecture adapters."""

    #: Short family name, shown in errors and saved with results.
    family: str = "base"
    #: The pipelines this adapter supports, in words (for error messages).
    description: str = ""

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @classmethod
    def supports(cls, pipe: Any) -> bool:
        raise NotImplementedError

    # -- modules -----------------------------------------------------------------------------
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    def attention_layers(self) -> list[tuple[LayerInfo, torch.nn.Module]]:
        """The layers a trace reads, in execution order, with their modules."""
        raise NotImplementedError

    def text_encoder(self) -> tuple[torch.nn.Module | None, Any]:
        """The encoder whose input ids define the prompt's tokens, and its tokenizer."""
        return getattr(self.pipe, "text_encoder", None), getattr(self.pipe, "tokenizer", None)

    def prompt_segments(self) -> list:
        """The runs of prompt positions the denoiser's text keys hold, in order, each labelled by the
        tokenizer that produced it (:class:`~attnscope.core.prompt.PromptSegment`). The first is
        :meth:`text_encoder`'s; SD3 adds its T5 positions after its CLIP positions. Default: one."""
        from ..core.prompt import PromptSegment

        encoder, tokenizer = self.text_encoder()
        return [PromptSegment("text", encoder, tokenizer)]

    def image_decoder(self) -> torch.nn.Module | None:
        vae = getattr(self.pipe, "vae", None)
        return getattr(vae, "decoder", None)

    # -- per call ----------------------------------------------------------------------------
    def uses_cfg(self) -> bool | None:
        """Whether the running pipeline call batches [unconditional; conditional] (None: unknown)."""
        flag = getattr(self.pipe, "do_classifier_free_guidance", None)
        return None if flag is None else bool(flag)

    def denoiser_inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, float | None]:
        """``(latent sample, timestep)`` from a denoiser forward call."""
        raise NotImplementedError

    def token_layout(self, layer: LayerInfo, queries: int, keys: int, latent_hw: tuple[int, int]) -> tuple[slice, slice]:
        """``(image query rows, prompt key columns)`` of one SDPA call of ``layer`` with ``queries``
        queries and ``keys`` keys on a latent of ``latent_hw``: both as ``slice(start, stop)``.

        Default (cross-attention): every query is an image position and every key a prompt token.
        Joint attention (MM-DiT) runs image and text tokens in one sequence; SD3 orders it
        ``[image ; text]``, Flux ``[text ; image]``.

        >>> Adapter(None).token_layout(None, 64, 77, (8, 8))
        (slice(0, 64, None), slice(0, 77, None))
        """
        return slice(0, queries), slice(0, keys)

    def is_extra_call(self, args: tuple, kwargs: dict, timestep: float | None, previous: float | None) -> bool:
        """Whether a denoiser call is an extra pass of the step just read (``previous``: that call's
        timestep, None at a generation's first call) that the trace must skip: Flux's true-CFG pass
        on the negative prompt, SD3's skip-layer-guidance pass. Default: no call is extra."""
        return False

    def layer_grid(self, layer: LayerInfo, pixels: int, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
        """``(height, width, factor)`` of ``layer``'s query grid when it sees ``pixels`` queries on a
        latent of ``latent_hw`` (factor: the latent's down-sampling at that layer)."""
        raise NotImplementedError

    def processor_hint(self) -> str:
        """What to do when a layer's attention processor does not call SDPA (appended to the error)."""
        return "set an attention processor that calls torch.nn.functional.scaled_dot_product_attention."

    def size_multiple(self) -> int:
        """Image heights and widths must be multiples of this (the pipeline's own rule)."""
        return int(getattr(self.pipe, "vae_scale_factor", 1) or 1)

    def prompt_words(self, prompt: str):
        """``(kept, cut)``: the prompt's words that the text encoder reads and those past its context."""
        from ..core.tokens import split_at_context

        _, tokenizer = self.text_encoder()
        return split_at_context(tokenizer, prompt, self.context_length())

    # -- one denoising pass on given latents (real-image protocol) ------------------------------------
    def context_length(self) -> int:
        """The number of prompt tokens the denoiser sees (longer prompts are cut)."""
        _, tokenizer = self.text_encoder()
        return int(tokenizer.model_max_length)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of images in [-1, 1], ``(n, 3, H, W)``, as the denoiser expects them."""
        raise NotImplementedError(f"{type(self).__name__} cannot encode images yet.")

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, level: float) -> tuple[torch.Tensor, Any]:
        """``(noisy latents, timestep)`` at ``level`` in (0, 1), a fraction of the noise schedule."""
        raise NotImplementedError(f"{type(self).__name__} cannot noise latents yet.")

    def denoise_once(self, noisy: torch.Tensor, timestep: Any, prompts: list[str]) -> None:
        """One conditional denoiser call on ``noisy`` for ``prompts`` (no guidance), for tracing."""
        self.denoise_call(noisy, timestep, self.condition(prompts))

    def condition(self, prompts: list[str]) -> dict:
        """The denoiser's prompt inputs for ``prompts`` (no guidance), encoded once for several calls."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a single denoising pass yet.")

    def denoise_call(self, noisy: torch.Tensor, timestep: Any, condition: dict) -> None:
        """One denoiser call on ``noisy`` latents (as :meth:`encode_images` gives them) with the
        prompt inputs of :meth:`condition`."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a single denoising pass yet.")

    def latent_hw(self, sample: torch.Tensor) -> tuple[int, int]:
        return int(sample.shape[-2]), int(sample.shape[-1])

    def image_hw(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        scale = int(getattr(self.pipe, "vae_scale_factor", 1) or 1)
        return latent_hw[0] * scale, latent_hw[1] * scale

    def model_id(self) -> str:
        config = getattr(self.pipe, "config", None)
        name = getattr(config, "_name_or_path", None) if config is not None else None
        return str(name or getattr(self.pipe, "name_or_path", "") or type(self.pipe).__name__)
