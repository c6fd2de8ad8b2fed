"""Adapter for pipelines whose denoiser is an ``SD3Transformer2DModel`` (Stable Diffusion 3 and 3.5).

Joint attention runs on ``[image ; text]``. The text tokens are SD3's CLIP positions (both CLIP
encoders read the same tokens; their features are concatenated per position) followed by its T5
positions — labelled by the CLIP and the T5 tokenizer respectively — or, without a T5 encoder, by
as many zero vectors, which carry no token and count as padding. SD3.5's QK-norm is applied before
SDPA, so the tap reads normalised q and k; its dual-attention blocks run a second, image-only
attention (``attn2``), a separate module that is never read as the joint one.

Example:
    >>> with attnscope.trace(pipe) as tc:                        # doctest: +SKIP
    ...     pipe("a red circle", num_inference_steps=20)
    >>> tc.daam().word("circle").shape                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from .mmdit import MMDiTAdapter


class SD3Adapter(MMDiTAdapter):
    family = "sd3"
    description = "diffusers pipelines whose denoiser is an SD3Transformer2DModel (Stable Diffusion 3, 3.5)"
    image_first = True

    @classmethod
    def supports(cls, pipe: Any) -> bool:
        from diffusers import SD3Transformer2DModel

        return isinstance(getattr(pipe, "transformer", None), SD3Transformer2DModel)

    def prompt_segments(self) -> list:
        from ..core.prompt import PromptSegment

        segments = [PromptSegment("clip", self.pipe.text_encoder, self.pipe.tokenizer)]
        if getattr(self.pipe, "text_encoder_3", None) is not None:
            segments.append(PromptSegment("t5", self.pipe.text_encoder_3, self.pipe.tokenizer_3))
        return segments

    def denoiser_inputs(self, args: tuple, kwargs: dict):
        sample = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        if torch.is_tensor(timestep):
            timestep = float(timestep.flatten()[0]) if timestep.numel() else None
        return sample, (None if timestep is None else float(timestep))

    def is_extra_call(self, args: tuple, kwargs: dict, timestep, previous) -> bool:
        """Skip-layer guidance re-runs the step with some blocks skipped (``skip_layers``)."""
        return bool(kwargs.get("skip_layers"))

    def processor_hint(self) -> str:
        return ("call pipe.transformer.set_attn_processor(JointAttnProcessor2_0()) "
                "(from diffusers.models.attention_processor) before tracing.")

    def encode_prompts(self, prompts: list[str], lengths: dict[str, int] | None = None) -> torch.Tensor:
        extra = {"max_sequence_length": lengths["t5"]} if lengths and "t5" in lengths else {}
        embeds, _, _, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=prompts, prompt_3=prompts,
                                                  do_classifier_free_guidance=False, **extra)
        return embeds

    def condition(self, prompts: list[str]) -> dict:
        with torch.no_grad():
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=prompts, prompt_3=prompts,
                                                           do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def denoise_call(self, noisy: torch.Tensor, sigma: float, condition: dict) -> None:
        """SD3's pipelines call the transformer at ``t = σ · num_train_timesteps``."""
        steps = self.pipe.scheduler.config.num_train_timesteps
        t = torch.full((noisy.shape[0],), sigma * steps, device=noisy.device, dtype=noisy.dtype)
        with torch.no_grad():
            self.pipe.transformer(hidden_states=noisy, timestep=t, return_dict=False, **condition)
