"""Streaming storage of one traced pipeline call (a *generation*).

Attention probabilities are summed over denoising calls as they arrive, at each layer's native
resolution, so memory does not grow with the number of steps. Only the conditional rows of a
classifier-free-guidance batch are kept, one slot per image, and only the tokens up to the
prompt's end token (unless ``keep_padding``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .layers import LayerInfo
from .prompt import SegmentIds, kept_positions, merged_words, token_labels
from .tokens import Word, words_from_tokens


@dataclass
class Generation:
    """Everything recorded about one pipeline call.

    Attributes:
        sums: ``{layer name: (images, heads, tokens, pixels)}`` float32 running sums (token-major).
        head_index: ``{layer name: [head indices kept]}``.
        steps_read: how many denoising calls were summed into ``sums``.
        per_step: ``{layer name: [per-call tensors]}`` when ``keep_steps`` is on.
        images: decoded images ``(images, H, W, 3)`` uint8 when the VAE decoder ran.
        segments: the ids of every prompt segment (:mod:`attnscope.core.prompt`) when the denoiser
            sees more than one (SD3: CLIP then T5); stored token ``i`` is then text position
            ``kept_tokens()[i]``. Empty for one segment: stored tokens are its leading positions.
        source: the tokenizer of a single segment (``"text"``, Flux's ``"t5"``, SD3's ``"clip"``
            without T5): every stored token's label when ``segments`` is empty.
        extras: what trace extensions (e.g. ConceptAttention's concept stream) record, by name.
    """

    prompt_ids: torch.Tensor | None
    tokenizer: Any
    cfg: bool
    batch: int
    latent_hw: tuple[int, int]
    image_hw: tuple[int, int]
    keep_steps: bool = False
    keep_padding: bool = False
    closed: bool = False
    call_index: int = -1
    timesteps: list = field(default_factory=list)
    steps_read: list = field(default_factory=list)
    sums: dict = field(default_factory=dict)
    head_index: dict = field(default_factory=dict)
    per_step: dict = field(default_factory=dict)
    images: torch.Tensor | None = None
    skipping: bool = False
    segments: list[SegmentIds] = field(default_factory=list)
    source: str = "text"
    extras: dict = field(default_factory=dict)
    _decoded: list = field(default_factory=list)
    _kept: int | torch.Tensor | None = None

    # -- shape of the batch -------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return self.batch // 2 if self.cfg else self.batch

    def conditional_rows(self) -> slice:
        """Rows of the denoiser batch that carry the prompt (the second half under CFG)."""
        return slice(self.n_images, self.batch) if self.cfg else slice(0, self.batch)

    @property
    def n_prompts(self) -> int:
        return int(self.prompt_ids.shape[0]) if self.prompt_ids is not None else self.n_images

    def prompt_of_image(self, image: int) -> int:
        """Index of the prompt that produced ``image`` (diffusers repeats each prompt in place)."""
        per_prompt = max(1, self.n_images // self.n_prompts)
        return image // per_prompt

    # -- tokens ----------------------------------------------------------------------------------
    def token_strings(self, prompt: int) -> list[str]:
        if self.prompt_ids is None or self.tokenizer is None:
            raise RuntimeError(
                "The trace saw no prompt tokens (were prompt_embeds passed?); "
                "token and word maps need the pipeline to encode the prompt itself."
            )
        if self.segments:
            return token_labels(self.segments, self._stored_positions(), prompt)[0]
        return self.tokenizer.convert_ids_to_tokens(self.prompt_ids[prompt].tolist())

    def token_sources(self, prompt: int = 0) -> list[str]:
        """Per stored token, the name of the prompt segment (tokenizer) that produced it."""
        if self.segments:
            return token_labels(self.segments, self._stored_positions(), prompt)[1]
        return [self.source] * len(self.token_strings(prompt))

    def _stored_positions(self) -> torch.Tensor:
        kept = self._kept
        if kept is None:
            raise RuntimeError("No attention was stored yet, so the stored token positions are unknown.")
        return torch.arange(kept) if isinstance(kept, int) else kept

    def special_tokens(self) -> set[str]:
        return set(getattr(self.tokenizer, "all_special_tokens", []) or [])

    def words(self, prompt: int) -> list[Word]:
        if self.segments:
            self.token_strings(prompt)  # the same error when no tokens were seen
            return merged_words(self.segments, self._stored_positions(), prompt)
        return words_from_tokens(self.token_strings(prompt), self.special_tokens())

    def kept_tokens(self, total: int) -> int | torch.Tensor:
        """Which of ``total`` text positions to store: a count of leading positions (one segment:
        through the longest prompt's end token), or the positions themselves (several segments)."""
        if self._kept is None:
            if self.segments:
                self._kept = kept_positions(self.segments, total, self.keep_padding)
            else:
                self._kept = self._count_kept(total)
        return self._kept

    def _count_kept(self, total: int) -> int:
        if self.keep_padding or self.prompt_ids is None or self.tokenizer is None:
            return total
        eos = getattr(self.tokenizer, "eos_token_id", None)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        longest = 0
        for row in self.prompt_ids.tolist():
            end = len(row)
            for i, tok in enumerate(row[1:], start=1):
                if tok == eos or (tok == pad and pad != eos):
                    end = i + 1
                    break
            longest = max(longest, end)
        return min(total, longest)

    # -- recording --------------------------------------------------------------------------------
    def begin_call(self, timestep: float | None) -> None:
        self.call_index += 1
        self.timesteps.append(timestep)
        self.skipping = False

    def accepts_step(self, steps: range | None) -> bool:
        """Whether the current denoiser call is read (never an extra guidance pass: ``skipping``)."""
        return not self.skipping and (steps is None or self.call_index in steps)

    def accumulate(self, layer: LayerInfo, heads: list[int], probs: torch.Tensor) -> None:
        """Add one call's conditional probabilities ``(images, heads, tokens, pixels)``."""
        keep = self.kept_tokens(probs.shape[-2])
        if isinstance(keep, int) and keep < probs.shape[-2]:
            probs = probs[..., :keep, :]
        current = self.sums.get(layer.name)
        if current is None:
            self.sums[layer.name] = probs.contiguous()
            self.head_index[layer.name] = list(heads)
        else:
            current.add_(probs)
        if not self.steps_read or self.steps_read[-1] != self.call_index:
            self.steps_read.append(self.call_index)
        if self.keep_steps:
            self.per_step.setdefault(layer.name, []).append(probs.to("cpu", copy=True))

    def add_decoded(self, output: Any) -> None:
        """Keep the VAE decoder's output as uint8 images, exactly as diffusers post-processes it."""
        sample = output.sample if hasattr(output, "sample") else output
        if isinstance(sample, tuple):
            sample = sample[0]
        if not torch.is_tensor(sample) or tuple(sample.shape[-2:]) != tuple(self.image_hw):
            return
        images = ((sample.detach().float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        self._decoded.append(images.permute(0, 2, 3, 1).cpu())
        decoded = torch.cat(self._decoded)
        if decoded.shape[0] >= self.n_images:
            self.images = decoded[-self.n_images :]
