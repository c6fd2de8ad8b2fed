"""DAAM — Diffusion Attentive Attribution Maps (Tang et al., ACL 2023).

A word's heat map is its cross-attention, summed over the denoising calls a trace read, upsampled
(bicubic) per layer and head to the latent grid, clamped at 0, averaged over layers and heads,
averaged over the word's tokens, and upsampled (bicubic) to image size. This is the paper's and the
reference code's order; summing over time at native resolution first is exact because bicubic
interpolation is linear. Only the word's tokens are upsampled (the reference upsamples every token).

Example:
    >>> heat = tc.daam(seed=0)                                  # doctest: +SKIP
    >>> soft = heat.word("giraffe", image=0)                    # doctest: +SKIP
    >>> mask = heat.word("giraffe", image=0, threshold=0.4)     # doctest: +SKIP
    >>> heat.save("runs/giraffe"); attnscope.load("runs/giraffe")   # doctest: +SKIP
    >>> DAAM()(tc, seed=0)                     # the same as tc.daam(seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import torch
import torch.nn.functional as F

from .._version import __version__
from ..core.layers import LayerInfo, select_layers
from ..core.tokens import Word, find_word
from .base import MapResult, Method, normalize, threshold_map, token_positions

#: ``word(..., threshold_mode=)`` names of the threshold rules in :mod:`attnscope.methods.base`.
THRESHOLD_MODES = {"paper": "relative_max", "reference": "reference"}


@dataclass
class DAAMResult(MapResult):
    """Per-image DAAM heat maps of one traced pipeline call.

    Attributes:
        maps: ``{layer name: (images, heads, tokens, h, w)}`` attention summed over steps.
        layers: metadata of the layers in ``maps`` (execution order, global head offsets).
        head_index: ``{layer name: head indices stored}`` (all heads unless the trace chose some).
        tokens: per prompt, the token strings the text encoder saw.
        words: per prompt, the words with their token positions.
        prompt_of_image: the prompt index of each image.
        image_hw, latent_hw: output image and latent sizes.
        images: ``(images, H, W, 3)`` uint8 as decoded, or None.
        meta: model, seed, steps, settings and version — everything needed to reproduce.
        per_step: ``{layer name: (steps, images, heads, tokens, h, w)}`` when the trace kept steps.
        token_sources: per prompt, the tokenizer (prompt segment) of each stored token: ``"text"``
            for one tokenizer; SD3's ``"clip"`` / ``"t5"`` (see :meth:`sources`).
    """

    kind: ClassVar[str] = "daam"
    threshold_rule: ClassVar[str] = "relative_max"

    maps: dict[str, torch.Tensor]
    layers: list[LayerInfo]
    head_index: dict[str, list[int]]
    tokens: list[list[str]]
    words_by_prompt: list[list[Word]]
    prompt_of_image: list[int]
    image_hw: tuple[int, int]
    latent_hw: tuple[int, int]
    images: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    per_step: dict[str, torch.Tensor] = field(default_factory=dict)
    token_sources: list[list[str]] = field(default_factory=list)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_generation(cls, gen, trace, meta: dict) -> "DAAMResult":
        if not gen.sums:
            raise RuntimeError(
                "The trace read no attention (steps/layers/factors excluded every call?); widen the selection."
            )
        layers = [l for l in trace.layers if l.name in gen.sums]
        maps, per_step = {}, {}
        for layer in layers:
            maps[layer.name] = _to_grid(gen.sums[layer.name], layer).to("cpu", copy=True)
            if gen.per_step.get(layer.name):
                per_step[layer.name] = torch.stack([_to_grid(p, layer) for p in gen.per_step[layer.name]])
        prompts = range(gen.n_prompts) if gen.prompt_ids is not None else []
        tokens = [gen.token_strings(p) for p in prompts]
        record = {
            "model": trace.adapter.model_id(),
            "family": trace.adapter.family,
            "cfg": gen.cfg,
            "context_tokens": int(gen.prompt_ids.shape[-1]) if gen.prompt_ids is not None else None,
            "steps_read": list(gen.steps_read),
            "timesteps": list(gen.timesteps),
            "settings": {
                "steps": None if trace.steps is None else [trace.steps.start, trace.steps.stop, trace.steps.step],
                "factors": None if trace.factors is None else sorted(trace.factors),
                "keep_padding": trace.keep_padding,
            },
            "attnscope_version": __version__,
        }
        record.update(meta)
        return cls(
            maps=maps,
            layers=[LayerInfo(**l.to_dict()) for l in layers],
            head_index={name: list(gen.head_index[name]) for name in maps},
            tokens=tokens,
            words_by_prompt=[gen.words(p) for p in prompts],
            prompt_of_image=[gen.prompt_of_image(i) for i in range(gen.n_images)],
            image_hw=tuple(gen.image_hw),
            latent_hw=tuple(gen.latent_hw),
            images=gen.images,
            meta=record,
            per_step=per_step,
            token_sources=[gen.token_sources(p) for p in prompts],
        )

    # -- words ---------------------------------------------------------------------------------
    def keys(self, image: int = 0) -> list[str]:
        return self.words(image)

    def words(self, image: int = 0) -> list[str]:
        """The words of the prompt of ``image``."""
        return [w.text for w in self._words(image)]

    def prompt(self, image: int = 0) -> str:
        return " ".join(self.words(image))

    def _words(self, image: int) -> list[Word]:
        image = self.check_image(image)
        if not self.words_by_prompt:
            raise RuntimeError("This result has no prompt tokens (prompt_embeds were passed); use token_map().")
        return self.words_by_prompt[self.prompt_of_image[image]]

    def _cut_hint(self, query: str) -> str | None:
        """Why ``query`` is missing when the recorded prompt text has it: the encoder cut the prompt."""
        prompt = self.meta.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt] if isinstance(prompt, str) else []
        parts = query.casefold().split()
        for text in texts:
            words = re.findall(r"[\w'-]+", text.casefold())
            if parts and any(words[i : i + len(parts)] == parts for i in range(len(words))):
                context = self.meta.get("context_tokens", "its")
                return (f"{query!r} was cut: the prompt is longer than the text encoder's {context}-token "
                        "context; shorten the prompt.")
        return None

    def sources(self, image: int = 0) -> list[str]:
        """Per stored token of ``image``'s prompt, the tokenizer that produced it (parallel to
        ``tokens``): ``"text"`` for a single tokenizer, e.g. ``"clip"`` then ``"t5"`` on SD3."""
        image = self.check_image(image)
        if not self.token_sources:
            return ["text"] * len(self.tokens[self.prompt_of_image[image]]) if self.tokens else []
        return list(self.token_sources[self.prompt_of_image[image]])

    def word_tokens(self, image: int = 0) -> list[Word]:
        """The prompt's words of ``image`` with their token positions (repeated words stay apart)."""
        return list(self._words(image))

    # -- maps ----------------------------------------------------------------------------------
    def word(
        self,
        word: str,
        image: int = 0,
        *,
        threshold: float | None = None,
        occurrence: int | None = None,
        threshold_mode: str = "paper",
        layers: Iterable[str] | None = None,
        heads: Iterable[int] | None = None,
        factors: Iterable[int] | None = None,
        step: int | None = None,
    ) -> torch.Tensor:
        """Heat map of ``word`` in ``image`` at image size.

        Args:
            word: a word of the prompt (exact, case-insensitive; several words = that phrase).
            occurrence: which occurrence of a repeated word (0-based); None averages all.
            threshold: None for the soft map in [0, 1]; τ for a boolean mask.
            threshold_mode: ``"paper"`` (eq. 7: ``D ≥ τ·max D`` on the aggregated map) or
                ``"reference"`` (daam 0.2.0: min-max normalised map ``> τ``).
            layers, heads, factors: restrict the aggregation (layer names/patterns, global head
                indices, down-sampling factors).
            step: use one kept denoising call (needs ``trace(..., keep_steps=True)``).
        """
        if threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"threshold_mode={threshold_mode!r} is unknown; use one of {tuple(THRESHOLD_MODES)}.")
        raw = self.raw_map(word, image, occurrence=occurrence, layers=layers, heads=heads, factors=factors, step=step)
        if threshold is None:
            return normalize(raw)
        return threshold_map(raw, THRESHOLD_MODES[threshold_mode], threshold)

    def raw_map(self, key: str | Sequence[int], image: int = 0, *, occurrence: int | None = None, **options) -> torch.Tensor:
        """Un-normalised map of a word or phrase (``str``) or of token positions (ints) in ``image``."""
        if isinstance(key, str):
            try:
                positions = token_positions(find_word(self._words(image), key, occurrence))
            except KeyError as err:
                raise KeyError(self._cut_hint(key) or err.args[0]) from None
        else:
            positions = [int(p) for p in key]
        return self.token_map(positions, image, **options)

    def token_map(
        self,
        positions: Sequence[int],
        image: int = 0,
        *,
        layers: Iterable[str] | None = None,
        heads: Iterable[int] | None = None,
        factors: Iterable[int] | None = None,
        step: int | None = None,
    ) -> torch.Tensor:
        """Un-normalised map (image size) of the mean over token ``positions``."""
        image = self.check_image(image)
        total, count = None, 0
        for layer, local in self._selection(layers, heads, factors):
            source = self.maps[layer.name] if step is None else self._step_maps(layer.name, step)
            n_tokens = source.shape[2]
            bad = [p for p in positions if not 0 <= p < n_tokens]
            if bad:
                raise IndexError(f"Token positions {bad} were not stored (the maps keep {n_tokens} tokens).")
            block = source[image][local][:, list(positions)].float()  # (heads, k, h, w)
            up = F.interpolate(block, size=self.latent_hw, mode="bicubic", align_corners=False).clamp_(min=0)
            part = up.sum(0)
            total = part if total is None else total + part
            count += len(local)
        if total is None:
            raise ValueError("No stored layer and head matches the requested layers/heads/factors.")
        latent_map = (total / count).mean(0)
        return F.interpolate(latent_map[None, None], size=self.image_hw, mode="bicubic", align_corners=False)[0, 0]

    def _step_maps(self, name: str, step: int) -> torch.Tensor:
        if name not in self.per_step:
            raise ValueError("Per-step maps were not kept; trace with attnscope.trace(pipe, keep_steps=True).")
        steps = self.meta.get("steps_read", [])
        if step not in steps:
            raise ValueError(f"Step {step} was not read; the trace read steps {steps}.")
        return self.per_step[name][steps.index(step)]

    def _selection(self, layers, heads, factors):
        chosen = select_layers(self.layers, layers) if layers is not None else self.layers
        if factors is not None:
            wanted = {int(f) for f in factors}
            chosen = [l for l in chosen if l.factor in wanted]
        global_heads = None if heads is None else {int(h) for h in heads}
        for layer in chosen:
            stored = self.head_index[layer.name]
            if global_heads is None:
                local = list(range(len(stored)))
            else:
                local = [i for i, h in enumerate(stored) if layer.head_offset + h in global_heads]
            if local:
                yield layer, local

    # -- files ---------------------------------------------------------------------------------
    def to_saved(self) -> tuple[dict, dict[str, torch.Tensor]]:
        tensors = {f"map/{name}": t for name, t in self.maps.items()}
        tensors.update({f"step/{name}": t for name, t in self.per_step.items()})
        if self.images is not None:
            tensors["images"] = self.images
        meta = {
            "layers": [l.to_dict() for l in self.layers],
            "head_index": self.head_index,
            "tokens": self.tokens,
            "token_sources": self.token_sources,
            "words": [[[w.text, list(w.tokens)] for w in ws] for ws in self.words_by_prompt],
            "prompt_of_image": self.prompt_of_image,
            "image_hw": list(self.image_hw),
            "latent_hw": list(self.latent_hw),
            "meta": self.meta,
        }
        return meta, tensors

    @classmethod
    def from_saved(cls, record: dict, tensors: dict[str, torch.Tensor]) -> "DAAMResult":
        """Rebuild a saved result; every JSON field is checked against the tensors first."""
        from ..io import ResultFileError

        try:
            layers = [LayerInfo(**l) for l in record["layers"]]
            result = cls(
                maps={l.name: tensors[f"map/{l.name}"] for l in layers},
                layers=layers,
                head_index={k: [int(h) for h in v] for k, v in record["head_index"].items()},
                tokens=record["tokens"],
                words_by_prompt=[[Word(t, tuple(int(i) for i in p)) for t, p in ws] for ws in record["words"]],
                prompt_of_image=[int(p) for p in record["prompt_of_image"]],
                image_hw=tuple(int(v) for v in record["image_hw"]),
                latent_hw=tuple(int(v) for v in record["latent_hw"]),
                images=tensors.get("images"),
                meta=record["meta"],
                per_step={k[5:]: v for k, v in tensors.items() if k.startswith("step/")},
                token_sources=[list(map(str, s)) for s in record.get("token_sources", [])],
            )
        except KeyError as err:
            raise ResultFileError(f"field {err} is missing; save the result again.") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise ResultFileError(f"a field has the wrong type ({err}); save the result again.") from None
        problem = result._consistency_problem()
        if problem:
            raise ResultFileError(f"{problem}; the JSON and the tensors disagree, save the result again.")
        return result

    def _consistency_problem(self) -> str | None:
        """The first disagreement between the metadata and the tensors, in words (None: consistent)."""
        n = self.n_images
        if len(self.image_hw) != 2 or len(self.latent_hw) != 2 or min(self.image_hw + self.latent_hw) < 1:
            return f"field 'image_hw'/'latent_hw' must be two positive sizes (got {self.image_hw}, {self.latent_hw})"
        if self.words_by_prompt and any(not 0 <= p < len(self.words_by_prompt) for p in self.prompt_of_image):
            return f"field 'prompt_of_image' names prompts beyond the {len(self.words_by_prompt)} stored"
        if set(self.head_index) != {l.name for l in self.layers}:
            return "field 'head_index' does not list exactly the stored layers"
        for layer in self.layers:
            maps, heads = self.maps[layer.name], self.head_index[layer.name]
            if any(not 0 <= h < layer.heads for h in heads):
                return f"field 'head_index' of {layer.name} names heads beyond its {layer.heads}"
            expected = (n, len(heads), None, layer.height, layer.width)
            if maps.dim() != 5 or any(e is not None and e != got for e, got in zip(expected, maps.shape)):
                return (f"field 'layers'/'prompt_of_image' give map shape (images={n}, heads={len(heads)}, tokens, "
                        f"{layer.height}, {layer.width}) for {layer.name}, but its tensor is {tuple(maps.shape)}")
            tokens = maps.shape[2]
            if any(t >= tokens for ws in self.words_by_prompt for w in ws for t in w.tokens):
                return f"field 'words' names token positions beyond the {tokens} stored"
        if self.images is not None and tuple(self.images.shape) != (n, *self.image_hw, 3):
            return f"field 'image_hw' or 'prompt_of_image' says {n} image(s) of {self.image_hw}, but 'images' is {tuple(self.images.shape)}"
        return None


def _to_grid(probs: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """``(images, heads, tokens, pixels)`` → ``(images, heads, tokens, h, w)``."""
    n, h, t, _ = probs.shape
    return probs.reshape(n, h, t, layer.height, layer.width)


class DAAM(Method):
    """DAAM as a method object: ``DAAM()(tc)`` is ``tc.daam()``.

    >>> DAAM().name
    'daam'
    """

    name: ClassVar[str] = "daam"
    result_type: ClassVar[type[MapResult]] = DAAMResult

    def __call__(self, trace: Any, generation: int = -1, **meta) -> DAAMResult:
        return DAAMResult.from_generation(trace.generation(generation), trace, meta)
