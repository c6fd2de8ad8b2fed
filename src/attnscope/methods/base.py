"""The method interface: the core records a generation, a method reads it into a typed result.

A :class:`Method` (DAAM today; selective heads, HRV and ConceptAttention next) has one verb: called
on a finished trace, it returns a :class:`MapResult`. Every map result shares the same behaviour:
look up a word or concept (:meth:`MapResult.keys`), give its soft map in [0, 1]
(:meth:`MapResult.soft`) or its mask under the method's threshold rule (:meth:`MapResult.mask`),
blend an overlay, and save to / load from safetensors + JSON under a registered ``kind``. The
threshold rules and their defaults are defined here and nowhere else; the benchmark uses them too.

Example:
    >>> raw = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    >>> threshold_map(raw, "relative_max", DEFAULT_THRESHOLD).tolist()   # DAAM eq. 7: D >= 0.4 max D
    [[False, False], [True, True]]
    >>> threshold_map(raw, "mean").tolist()                              # ConceptAttention: > mean
    [[False, False], [True, True]]
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

#: τ of the DAAM paper's binarisation (eq. 7, ``D ≥ τ · max D``), the default for every DAAM-style map.
DEFAULT_THRESHOLD = 0.4

#: How a soft map becomes a mask:
#: ``relative_max``: ``D ≥ τ · max D`` on the aggregated map (DAAM eq. 7);
#: ``reference``: min-max normalised map ``> τ`` (daam 0.2.0's code);
#: ``mean``: ``D > mean D`` (ConceptAttention's protocol; τ unused).
THRESHOLD_RULES = ("relative_max", "reference", "mean")


def normalize(raw: torch.Tensor) -> torch.Tensor:
    """Min-max scale a map to [0, 1] (a constant map becomes all zeros)."""
    low, high = raw.min(), raw.max()
    return (raw - low) / (high - low).clamp_min(1e-8)


def threshold_map(raw: torch.Tensor, rule: str = "relative_max", threshold: float | None = None) -> torch.Tensor:
    """Boolean mask of a map (tensor or array) under one of :data:`THRESHOLD_RULES`."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r} is unknown; use one of {THRESHOLD_RULES}.")
    raw = torch.as_tensor(raw)
    tau = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if rule != "mean" and not 0.0 <= tau <= 1.0:
        raise ValueError(f"threshold={tau} must lie in [0, 1] (a fraction of the map's maximum).")
    if rule == "relative_max":
        return raw >= tau * raw.max()
    if rule == "reference":
        return normalize(raw) > tau
    return raw > raw.float().mean()


class MapResult:
    """Shared behaviour of every method's result: maps per image and key (a word or a concept).

    Subclasses set :attr:`kind` (the name files are saved under) and implement :meth:`keys`,
    :meth:`raw_map`, :meth:`to_saved` and :meth:`from_saved`; they hold ``prompt_of_image`` or
    override :attr:`n_images`, and ``images`` (uint8 ``(images, H, W, 3)`` or None) and ``meta``.
    """

    kind: ClassVar[str] = ""
    threshold_rule: ClassVar[str] = "relative_max"
    images: torch.Tensor | None
    meta: dict

    # -- what subclasses provide -------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.prompt_of_image)

    def keys(self, image: int = 0) -> list[str]:
        """The words (or concepts) that have a map in ``image``."""
        raise NotImplementedError

    def raw_map(self, key: Any, image: int = 0, **options) -> torch.Tensor:
        """The un-normalised map of ``key`` in ``image`` at image size (larger = more attributed)."""
        raise NotImplementedError

    def to_saved(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(JSON-able record, tensors)`` that :meth:`from_saved` turns back into this result."""
        raise NotImplementedError

    @classmethod
    def from_saved(cls, record: dict, tensors: dict[str, torch.Tensor]) -> "MapResult":
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def check_image(self, image: int) -> int:
        """``image`` as a valid index, or an IndexError that names the valid range."""
        n = self.n_images
        if not isinstance(image, int) or not -n <= image < n:
            valid = f"0..{n - 1}" if n else "none"
            raise IndexError(f"image={image} does not exist; this result has {n} image(s) (valid: {valid}).")
        return image % n

    def soft(self, key: Any, image: int = 0, **options) -> torch.Tensor:
        """The map of ``key`` in ``image``, min-max scaled to [0, 1]."""
        return normalize(self.raw_map(key, image, **options))

    def mask(self, key: Any, image: int = 0, threshold: float | None = None, *, rule: str | None = None,
             **options) -> torch.Tensor:
        """Boolean mask of ``key`` under the method's threshold rule (or ``rule``) at ``threshold``."""
        return threshold_map(self.raw_map(key, image, **options), rule or self.threshold_rule, threshold)

    def overlay(self, key: Any, image: int = 0, alpha: float = 0.55, **options):
        """The decoded image with ``key``'s soft map blended on top, as a PIL image."""
        from ..viz.overlay import overlay

        image = self.check_image(image)
        if self.images is None:
            raise RuntimeError("This result holds no decoded image (output_type='latent'?); "
                               "pass an image to attnscope.viz.overlay.overlay instead.")
        return overlay(self.images[image].numpy(), self.soft(key, image, **options), alpha=alpha)

    def save(self, path):
        """Save as ``path/attnscope.json`` + ``path/tensors.safetensors`` (no pickle); returns the folder."""
        from ..io import save_result

        record, tensors = self.to_saved()
        return save_result(path, self.kind, record, tensors)


class Method:
    """A way of turning a traced generation into a :class:`MapResult` — one verb: call it.

    Subclasses set :attr:`name` and implement :meth:`__call__`.

        >>> result = DAAM()(tc, generation=-1, seed=0)      # doctest: +SKIP
    """

    name: ClassVar[str] = ""
    result_type: ClassVar[type[MapResult]] = MapResult
    #: How the method's maps are looked up: ``"tokens"`` (a word's token positions in the prompt) or
    #: ``"concepts"`` (words given to the trace through :meth:`trace_options`).
    keyed_by: ClassVar[str] = "tokens"

    def __call__(self, trace: Any, generation: int = -1, **meta) -> MapResult:
        raise NotImplementedError

    def trace_options(self, words: Sequence[str]) -> dict:
        """The ``attnscope.trace`` options this method needs to map ``words`` (none by default)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def token_positions(words: Sequence) -> list[int]:
    """The token positions of a sequence of :class:`~attnscope.core.tokens.Word`."""
    return [t for w in words for t in w.tokens]
