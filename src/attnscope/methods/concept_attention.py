"""ConceptAttention (Helbling et al., ICML 2025): where each user-given concept is in an MM-DiT's image.

Concept tokens run as a third stream through the double-stream blocks
(:mod:`attnscope.methods.concept_stream`); at every block and call the concepts' attention outputs
are compared with the image tokens' (both before the output projection, heads concatenated),
softmaxed over concepts at every patch, and averaged over the chosen blocks and calls.

Example:
    >>> with attnscope.trace(pipe, concepts=["circle", "square", "background"]) as tc:   # doctest: +SKIP
    ...     pipe("a red circle and a blue square", num_inference_steps=4)
    >>> ca = tc.concept_attention()                       # doctest: +SKIP
    >>> ca.concept("circle", image=0)                     # (H, W) in [0, 1]            # doctest: +SKIP
    >>> ca.saliency.shape                                 # (images, concepts, h, w)    # doctest: +SKIP
    >>> ca.segment(image=0)                               # (H, W) concept index per pixel   # doctest: +SKIP
    >>> ca.concept("circle", space="cross_attention", layers=["joint2.attn"])  # the baseline  # doctest: +SKIP

Selection (``tc.concept_attention(space=, layers=, softmax=)`` sets the result's defaults; every
map query can override them): ``space`` one of :data:`~attnscope.methods.concept_stream.SPACES`
(``"output"``: ConceptAttention; ``"value"``: value-space variant; ``"cross_attention"``: the
paper's cross-attention baseline; ``"query"``: the reference code's "cross attention");
``layers``: names or patterns of double-stream blocks (``"joint*"``; default: all); ``softmax``:
``"per_layer"`` (softmax over concepts per block and call, then mean: the paper and reference
code) or ``"after_mean"`` (mean of raw scores, then one softmax) or ``"none"`` (mean raw scores).
Steps are chosen when tracing (``trace(..., steps=)``), or per kept call (``keep_steps=True``,
``step=k``, per-layer softmax only). Masks threshold each map at its mean (the paper's protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F

from .._version import __version__
from ..core.layers import LayerInfo, select_layers
from .base import MapResult, Method
from .concept_stream import SPACES

SOFTMAX = ("per_layer", "after_mean", "none")


@dataclass
class ConceptAttentionResult(MapResult):
    """Concept maps of one traced pipeline call.

    Attributes:
        concepts: the concept words, in order.
        softmaxed, logits: ``{space: {layer: (images, concepts, h, w)}}`` summed over calls: after
            the softmax over concepts, and the raw concept scores before it.
        calls: per layer, how many denoising calls were summed.
        layers: the double-stream blocks' attention layers (grid and heads), in execution order.
        tokens: per concept, its tokens as ``(string, tokenizer segment)``.
        defaults: the selection ``saliency`` and the map queries use unless told otherwise.
        per_step: ``{space: {layer: (steps, images, concepts, h, w)}}`` with ``keep_steps``.
    """

    kind: ClassVar[str] = "concept_attention"
    threshold_rule: ClassVar[str] = "mean"

    concepts: list[str]
    softmaxed: dict[str, dict[str, torch.Tensor]]
    logits: dict[str, dict[str, torch.Tensor]]
    calls: dict[str, int]
    layers: list[LayerInfo]
    tokens: list[list[list[str]]]
    prompt_of_image: list[int]
    image_hw: tuple[int, int]
    latent_hw: tuple[int, int]
    images: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    per_step: dict = field(default_factory=dict)

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_generation(cls, gen, trace, meta: dict, defaults: dict) -> "ConceptAttentionResult":
        record = gen.extras.get("concept_attention")
        if record is None or not record["calls"]:
            raise RuntimeError("This trace ran no concept stream; trace with attnscope.trace(pipe, concepts=[...]) "
                               "(and a steps= range that includes some call) to use ConceptAttention.")
        layers = []
        for info, _ in trace.adapter.joint_blocks():
            if info.name in record["calls"]:
                h, w = record["grid"][info.name]
                layers.append(LayerInfo(**{**info.to_dict(), "height": h, "width": w}))
        grid = lambda t, l: t.reshape(*t.shape[:-1], l.height, l.width)  # noqa: E731
        maps = {kind: {s: {l.name: grid(record[kind][s][l.name], l) for l in layers} for s in SPACES}
                for kind in ("soft", "logits")}
        per_step = {s: {l.name: grid(torch.stack(record["per_step"][s][l.name]), l)
                        for l in layers if record["per_step"][s].get(l.name)} for s in SPACES}
        tokens = [[[t, src] for t, src, o in zip(record["token_strings"], record["token_sources"], record["token_owner"])
                   if o == c] for c in range(len(record["concepts"]))]
        info = {"model": trace.adapter.model_id(), "family": trace.adapter.family, "cfg": gen.cfg,
                "steps_read": list(record["steps"]), "timesteps": list(gen.timesteps),
                "attnscope_version": __version__}
        info.update(meta)
        return cls(concepts=list(record["concepts"]), softmaxed=maps["soft"], logits=maps["logits"],
                   calls=dict(record["calls"]), layers=layers, tokens=tokens,
                   prompt_of_image=[gen.prompt_of_image(i) for i in range(gen.n_images)],
                   image_hw=tuple(gen.image_hw), latent_hw=tuple(gen.latent_hw), images=gen.images, meta=info,
                   defaults=defaults, per_step=per_step)

    # -- maps --------------------------------------------------------------------------------------
    def keys(self, image: int = 0) -> list[str]:
        return list(self.concepts)

    def maps(self, *, space: str | None = None, layers: Iterable[str] | str | None = None,
             softmax: str | None = None, step: int | None = None) -> torch.Tensor:
        """``(images, concepts, h, w)`` on the patch grid for a selection (defaults: :attr:`defaults`)."""
        space = space or self.defaults.get("space", "output")
        softmax = softmax or self.defaults.get("softmax", "per_layer")
        layers = layers if layers is not None else self.defaults.get("layers")
        if space not in SPACES:
            raise ValueError(f"space={space!r} is unknown; use one of {SPACES}.")
        if softmax not in SOFTMAX:
            raise ValueError(f"softmax={softmax!r} is unknown; use one of {SOFTMAX}.")
        chosen = select_layers(self.layers, layers) if layers is not None else self.layers
        if not chosen:
            raise ValueError("No double-stream block is selected; pass layers= that match some, e.g. 'joint*'.")
        if step is not None:
            return self._step_maps(space, chosen, step, softmax)
        source = self.softmaxed if softmax == "per_layer" else self.logits
        total = sum(source[space][l.name] for l in chosen)
        mean = total / sum(self.calls[l.name] for l in chosen)
        return mean.softmax(1) if softmax == "after_mean" else mean

    def _step_maps(self, space, chosen, step, softmax) -> torch.Tensor:
        steps = self.meta.get("steps_read", [])
        if not self.per_step.get(space):
            raise ValueError("Per-step maps were not kept; trace with attnscope.trace(pipe, concepts=..., keep_steps=True).")
        if step not in steps:
            raise ValueError(f"Step {step} was not read; the trace read steps {steps}.")
        if softmax != "per_layer":
            raise ValueError("Per-step maps are kept after the softmax over concepts only; use softmax='per_layer'.")
        return sum(self.per_step[space][l.name][steps.index(step)] for l in chosen) / len(chosen)

    @property
    def saliency(self) -> torch.Tensor:
        """``(images, concepts, h, w)``: per patch, the softmax over concepts, averaged (default selection)."""
        return self.maps()

    def concept(self, name: str, image: int = 0, **selection) -> torch.Tensor:
        """The map of concept ``name`` in ``image`` at image size (bilinear), values in [0, 1]."""
        image = self.check_image(image)
        index = self._index(name)
        return self._upsample(self.maps(**selection)[image : image + 1])[0, index]

    def raw_map(self, key: Any, image: int = 0, **selection) -> torch.Tensor:
        """The map of a concept (its name or index) at image size; larger = more that concept."""
        if not isinstance(key, (str, int)):
            raise TypeError(f"ConceptAttention maps are keyed by concept, not {type(key).__name__}; "
                            f"use one of {self.concepts}.")
        return self.concept(self.concepts[key] if isinstance(key, int) else key, image, **selection)

    def segment(self, image: int = 0, **selection) -> torch.Tensor:
        """``(H, W)`` long tensor: the index (into :attr:`concepts`) of the winning concept per pixel."""
        image = self.check_image(image)
        return self._upsample(self.maps(**selection)[image : image + 1])[0].argmax(0)

    def _index(self, name: str) -> int:
        folded = [c.casefold() for c in self.concepts]
        if name.casefold() not in folded:
            raise KeyError(f"{name!r} is not a traced concept; the concepts are: {', '.join(self.concepts)}")
        return folded.index(name.casefold())

    def _upsample(self, maps: torch.Tensor) -> torch.Tensor:
        return F.interpolate(maps.float(), size=self.image_hw, mode="bilinear", align_corners=False)

    # -- files -------------------------------------------------------------------------------------
    def to_saved(self) -> tuple[dict, dict[str, torch.Tensor]]:
        tensors = {f"{kind}/{space}/{layer}": t for kind, spaces in (("soft", self.softmaxed), ("logits", self.logits))
                   for space, layers in spaces.items() for layer, t in layers.items()}
        tensors.update({f"step/{space}/{layer}": t for space, layers in self.per_step.items() for layer, t in layers.items()})
        if self.images is not None:
            tensors["images"] = self.images
        record = {"concepts": self.concepts, "calls": self.calls, "layers": [l.to_dict() for l in self.layers],
                  "tokens": self.tokens, "prompt_of_image": self.prompt_of_image, "image_hw": list(self.image_hw),
                  "latent_hw": list(self.latent_hw), "meta": self.meta, "defaults": self.defaults}
        return record, tensors

    @classmethod
    def from_saved(cls, record: dict, tensors: dict[str, torch.Tensor]) -> "ConceptAttentionResult":
        from ..io import ResultFileError

        try:
            layers = [LayerInfo(**l) for l in record["layers"]]
            pick = lambda kind: {s: {l.name: tensors[f"{kind}/{s}/{l.name}"] for l in layers} for s in SPACES}  # noqa: E731
            per_step = {s: {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"step/{s}/")} for s in SPACES}
            return cls(concepts=list(record["concepts"]), softmaxed=pick("soft"), logits=pick("logits"),
                       calls={k: int(v) for k, v in record["calls"].items()}, layers=layers, tokens=record["tokens"],
                       prompt_of_image=list(record["prompt_of_image"]), image_hw=tuple(record["image_hw"]),
                       latent_hw=tuple(record["latent_hw"]), images=tensors.get("images"), meta=record["meta"],
                       defaults=dict(record.get("defaults") or {}), per_step=per_step)
        except (KeyError, TypeError) as err:
            raise ResultFileError(f"The saved ConceptAttention result is incomplete (missing {err}); save it again.") from None


class ConceptAttention(Method):
    """ConceptAttention as a method object: ``ConceptAttention()(tc)`` is ``tc.concept_attention()``.

    ``space``, ``layers`` and ``softmax`` become the result's default selection (see the module
    docstring); other keywords are stored with the result.

    >>> ConceptAttention().name
    'concept_attention'
    """

    name: ClassVar[str] = "concept_attention"
    result_type: ClassVar[type[MapResult]] = ConceptAttentionResult
    keyed_by: ClassVar[str] = "concepts"
    #: The space read when the call names none (subclasses register the baselines under own names).
    space: ClassVar[str] = "output"
    #: The concept added to every benchmark concept set, as in the paper's protocol.
    background: ClassVar[str] = "background"

    def __call__(self, trace: Any, generation: int = -1, *, space: str | None = None,
                 layers: Iterable[str] | str | None = None, softmax: str = "per_layer", **meta) -> ConceptAttentionResult:
        space = space or self.space
        defaults = {"space": space, "layers": [layers] if isinstance(layers, str) else layers, "softmax": softmax}
        result = ConceptAttentionResult.from_generation(trace.generation(generation), trace, meta, defaults)
        result.maps()  # a bad selection fails here, not at the first map query
        return result

    def trace_options(self, words) -> dict:
        """The benchmark's concepts: the words to map, once each, and the background."""
        return {"concepts": list(dict.fromkeys([*words, self.background]))}


class ConceptCrossAttention(ConceptAttention):
    """The paper's cross-attention baseline on the same concept stream (image queries against concept
    keys), registered under its own name so the benchmark can score it beside ConceptAttention."""

    name: ClassVar[str] = "concept_cross_attention"
    space: ClassVar[str] = "cross_attention"
