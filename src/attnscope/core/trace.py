"""``attnscope.trace(pipe)``: a context manager that records attention while a pipeline runs.

Example:
    >>> import attnscope                                                   # doctest: +SKIP
    >>> with attnscope.trace(pipe, steps=range(0, 10)) as tc:               # doctest: +SKIP
    ...     out = pipe(["a cat", "a dog"], num_inference_steps=20)
    >>> tc.daam().word("cat", image=0).shape                               # doctest: +SKIP

Hooks are PyTorch module hooks only (no pipeline internals are patched): a pre-hook on the text
encoder records the token ids, a pre-hook on the denoiser marks each denoising call and reads the
latent shape and timestep, a hook on the VAE decoder keeps the decoded images, and an
:class:`~attnscope.core.tap.AttentionTap` on every traced attention module reads q and k at the
SDPA call. All hooks are removed when the block exits, also when the pipeline raises.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Sequence

import torch

from .extension import ExtensionHost
from .layers import LayerInfo, assign_head_offsets, select_layers
from .profile import HookProfile
from .prompt import SegmentIds
from .store import Generation
from .tap import AttentionTap, ProfiledTap, attention_probs


def _as_step_filter(steps) -> range | None:
    if steps is None or isinstance(steps, range):
        return steps
    if isinstance(steps, slice):
        return range(steps.start or 0, steps.stop if steps.stop is not None else 1 << 30, steps.step or 1)
    if isinstance(steps, (tuple, list)) and len(steps) == 2:
        return range(int(steps[0]), int(steps[1]))
    raise ValueError(f"steps={steps!r} is not understood; pass a range, a slice or a (start, stop) pair.")


class Trace(ExtensionHost):
    """The live trace returned by :func:`trace`; holds one :class:`Generation` per pipeline call.

    What it offers trace extensions (``hook``, ``tap``, ``paused``, ``active_generation``) is in
    :class:`~attnscope.core.extension.ExtensionHost`."""

    def __init__(
        self,
        pipe: Any,
        *,
        layers: Iterable[str] | str | None = None,
        factors: Iterable[int] | None = None,
        heads: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        steps: range | slice | tuple | None = None,
        keep_steps: bool = False,
        keep_padding: bool = False,
        cfg: bool | None = None,
        profile: bool = False,
        adapter: Any = None,
        **extensions: Any,
    ):
        from ..adapters import adapter_for

        self.pipe = pipe
        self.adapter = adapter or adapter_for(pipe)
        found = self.adapter.attention_layers()
        all_layers = [info for info, _ in found]
        assign_head_offsets(all_layers)
        self.model_layers = all_layers
        chosen = {l.name for l in select_layers(all_layers, layers)}
        self._modules = {info.name: module for info, module in found if info.name in chosen}
        self.layers: list[LayerInfo] = [l for l in all_layers if l.name in chosen]
        self.factors = None if factors is None else {int(f) for f in factors}
        self.head_index = self._resolve_heads(heads)
        self.steps = _as_step_filter(steps)
        self.keep_steps = keep_steps
        self.keep_padding = keep_padding
        self.cfg_override = cfg
        self.profile: HookProfile | None = HookProfile() if profile else None
        self.generations: list[Generation] = []
        self.segments = self.adapter.prompt_segments()
        self._pending_ids: torch.Tensor | None = None
        self._pending_segments: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._grid_latent: dict = {}
        self._active = False
        self._paused = False
        self.extensions = self._make_extensions(extensions)

    def _make_extensions(self, options: dict) -> list:
        """Trace options that methods add (``concepts=`` of ConceptAttention): each names a
        :class:`~attnscope.core.extension.TraceExtension` registered by a method; the core only
        creates and installs it."""
        if not options:
            return []
        from ..methods import trace_extension  # the registry, by name: the core knows no method

        return [trace_extension(name)(self, value) for name, value in options.items()]

    # -- configuration -------------------------------------------------------------------------
    def _resolve_heads(self, heads) -> dict[str, list[int]]:
        if heads is None:
            return {l.name: list(range(l.heads)) for l in self.layers}
        if isinstance(heads, Mapping):
            unknown = set(heads) - {l.name for l in self.layers}
            if unknown:
                raise ValueError(f"heads= names layers that are not traced: {sorted(unknown)}")
            chosen = {l.name: list(heads.get(l.name, range(l.heads))) for l in self.layers}
        else:
            chosen = {l.name: list(heads) for l in self.layers}
        for layer in self.layers:
            bad = [h for h in chosen[layer.name] if not 0 <= h < layer.heads]
            if bad:
                raise ValueError(f"Layer {layer.name} has {layer.heads} heads; head indices {bad} do not exist.")
        return chosen

    # -- context ---------------------------------------------------------------------------------
    def __enter__(self) -> "Trace":
        if self._active:
            raise RuntimeError("This trace is already active; a trace cannot be entered twice.")
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        self._active = False
        if self.generations:
            self.generations[-1].closed = True
        return False

    def _install(self) -> None:
        timed = (lambda fn: fn) if self.profile is None else (lambda fn: self.profile.timed(fn, "hooks"))
        denoiser = self.adapter.denoiser()
        if self.profile is not None:  # outermost: the call's wall time includes every hook below
            self._handles.append(denoiser.register_forward_pre_hook(self.profile.call_started, prepend=True))
            self._handles.append(denoiser.register_forward_hook(self.profile.call_ended, always_call=True))
        self._handles.append(denoiser.register_forward_pre_hook(timed(self._on_denoiser), with_kwargs=True))
        encoder, _ = self.adapter.text_encoder()
        if encoder is not None:
            self._handles.append(encoder.register_forward_pre_hook(timed(self._on_encoder), with_kwargs=True))
        for segment in self.segments[1:]:  # further prompt segments (SD3's T5 after its CLIP positions)
            if segment.encoder is not None and segment.encoder is not encoder:
                hook = timed(self._segment_hook(segment.name))
                self._handles.append(segment.encoder.register_forward_pre_hook(hook, with_kwargs=True))
        decoder = self.adapter.image_decoder()
        if decoder is not None:
            self._handles.append(decoder.register_forward_hook(timed(self._on_decoder)))
        for layer in self.layers:
            observe = lambda q, k, m, s, layer=layer: self._observe(layer, q, k, m, s)  # noqa: E731
            tap = AttentionTap(observe) if self.profile is None else ProfiledTap(observe, self.profile)
            module = self._modules[layer.name]
            self._handles.append(module.register_forward_pre_hook(timed(self._enter_hook(tap))))
            self._handles.append(module.register_forward_hook(timed(self._leave_hook(tap, layer)), always_call=True))
        for extension in self.extensions:
            extension.install(self)

    @staticmethod
    def _enter_hook(tap: AttentionTap):
        def hook(module, args):
            tap.__enter__()

        return hook

    def _leave_hook(self, tap: AttentionTap, layer: LayerInfo):
        def hook(module, args, output):
            self._leave(tap, layer, module)

        return hook

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _leave(self, tap: AttentionTap, layer: LayerInfo, module) -> None:
        tap.__exit__(None, None, None)
        if not tap.seen and self._current_accepts(layer):
            processor = type(getattr(module, "processor", None)).__name__
            raise RuntimeError(
                f"Layer {layer.name} ran processor {processor}, which does not call "
                "torch.nn.functional.scaled_dot_product_attention, so attnscope cannot read it; "
                f"{self.adapter.processor_hint()}"
            )

    def _current_accepts(self, layer: LayerInfo) -> bool:
        gen = self.generations[-1] if self.generations else None
        return gen is not None and not gen.closed and gen.accepts_step(self.steps)

    # -- hooks -----------------------------------------------------------------------------------
    def _on_encoder(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if self._pending_ids is None and torch.is_tensor(ids) and not self._paused:
            self._pending_ids = ids.detach().to("cpu")
            self._warn_if_cut(self._pending_ids)

    def _segment_hook(self, name: str):
        def hook(module, args, kwargs) -> None:
            ids = args[0] if args else kwargs.get("input_ids")
            if name not in self._pending_segments and torch.is_tensor(ids) and not self._paused:
                self._pending_segments[name] = ids.detach().to("cpu")

        return hook

    def _warn_if_cut(self, ids: torch.Tensor) -> None:
        """Warn when a prompt fills the encoder's whole context: its end token is the last position,
        right after a word, so words past the context were (or may have been) cut."""
        _, tokenizer = self.adapter.text_encoder()
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None or ids.dim() != 2 or ids.shape[-1] < 3:
            return
        full = [i for i, row in enumerate(ids.tolist()) if row[-1] == eos and row[-2] != eos and eos not in row[1:-1]]
        if full:
            warnings.warn(f"Prompt(s) {full} fill all {ids.shape[-1]} tokens of the text encoder's context; words "
                          "past it were cut and have no maps. Shorten the prompt to map every word.", stacklevel=2)

    def _on_denoiser(self, module, args, kwargs) -> None:
        sample, timestep = self.adapter.denoiser_inputs(args, kwargs)
        gen = self.generations[-1] if self.generations else None
        restarted = gen is not None and gen.timesteps and timestep is not None and timestep > gen.timesteps[-1]
        if gen is None or gen.closed or self._pending_ids is not None or restarted:
            if gen is not None:
                gen.closed = True
            gen = self._new_generation(sample)
            self.generations.append(gen)
        previous = gen.timesteps[-1] if gen.timesteps else None
        if self.adapter.is_extra_call(args, kwargs, timestep, previous):
            gen.skipping = True  # a guidance pass of the same step (Flux's true CFG, SD3's skip-layer guidance)
            return
        gen.begin_call(timestep)

    def _new_generation(self, sample: torch.Tensor) -> Generation:
        cfg = self.cfg_override if self.cfg_override is not None else self.adapter.uses_cfg()
        batch = int(sample.shape[0])
        if cfg is None:
            raise RuntimeError(
                f"Cannot tell whether {type(self.pipe).__name__} batches classifier-free guidance; "
                "pass attnscope.trace(pipe, cfg=True or False)."
            )
        if cfg and batch % 2:
            raise RuntimeError(f"A guided denoiser call has an odd batch of {batch}; pass cfg=False if it is unguided.")
        ids, self._pending_ids = self._pending_ids, None
        pending, self._pending_segments = self._pending_segments, {}
        latent_hw = self.adapter.latent_hw(sample)
        _, tokenizer = self.adapter.text_encoder()
        segments = []
        if ids is not None and len(self.segments) > 1:
            found = [SegmentIds(self.segments[0].name, tokenizer, ids)]
            found += [SegmentIds(s.name, s.tokenizer, pending[s.name]) for s in self.segments[1:] if s.name in pending]
            segments = found if len(found) > 1 else []
        return Generation(
            prompt_ids=ids,
            tokenizer=tokenizer,
            segments=segments,
            source=self.segments[0].name if self.segments else "text",
            cfg=bool(cfg),
            batch=batch,
            latent_hw=latent_hw,
            image_hw=self.adapter.image_hw(latent_hw),
            keep_steps=self.keep_steps,
            keep_padding=self.keep_padding,
        )

    def _on_decoder(self, module, args, output) -> None:
        gen = self.generations[-1] if self.generations else None
        if gen is not None and not gen.closed:
            gen.add_decoded(output)

    def _observe(self, layer: LayerInfo, query, key, mask, scale) -> None:
        gen = self.generations[-1] if self.generations else None
        if gen is None or gen.closed or not gen.accepts_step(self.steps):
            return
        image, text = self.adapter.token_layout(layer, int(query.shape[-2]), int(key.shape[-2]), gen.latent_hw)
        pixels = image.stop - image.start
        if layer.height * layer.width != pixels or self._grid_latent.get(layer.name) != gen.latent_hw:
            layer.height, layer.width, layer.factor = self.adapter.layer_grid(layer, pixels, gen.latent_hw)
            self._grid_latent[layer.name] = gen.latent_hw
        if self.factors is not None and layer.factor not in self.factors:
            return
        rows = gen.conditional_rows()
        heads = self.head_index[layer.name]
        q, k = query[rows], key[rows]
        if pixels != query.shape[-2]:  # joint attention: read the image queries only
            q = q[..., image, :]
        if len(heads) != layer.heads:
            q, k = q[:, heads], k[:, heads]
        if mask is not None and mask.dim() == 4:
            mask = mask[rows] if mask.shape[0] == query.shape[0] else mask
            if len(heads) != layer.heads and mask.shape[1] == layer.heads:
                mask = mask[:, heads]
            if mask.shape[-2] == query.shape[-2] and pixels != query.shape[-2]:
                mask = mask[..., image, :]
        keep = gen.kept_tokens(text.stop - text.start)
        if text.start or not isinstance(keep, int):  # prompt keys after the image keys, or several segments
            keep = text.start + (torch.arange(keep) if isinstance(keep, int) else keep)
        gen.accumulate(layer, heads, attention_probs(q, k, mask, scale, keep=keep))

    # -- results ---------------------------------------------------------------------------------
    def generation(self, index: int = -1) -> Generation:
        if not self.generations:
            raise RuntimeError(
                "Nothing was traced: run the pipeline inside `with attnscope.trace(pipe) as tc:` first."
            )
        n = len(self.generations)
        if not isinstance(index, int) or not -n <= index < n:
            raise IndexError(f"generation={index} does not exist; this trace holds {n} pipeline call(s) "
                             f"(valid: 0..{n - 1}, or -1 for the last).")
        return self.generations[index]

    def run(self, method: Any, generation: int = -1, **meta):
        """Read a traced pipeline call (the last by default) with ``method``: a
        :class:`~attnscope.methods.base.Method` or a registered method's name. ``meta`` (e.g.
        ``seed=0``) is stored with the result.

        ``tc.run("daam")`` is also spelled ``tc.daam()``: every registered method is a method of
        the trace under its name.
        """
        if isinstance(method, str):
            from ..methods import get_method

            method = get_method(method)
        return method(self, generation, **meta)

    def __getattr__(self, name: str):
        # tc.daam(), tc.<any registered method>(): the core resolves methods by name only
        if not name.startswith("_"):
            from ..methods import available_methods

            if name in available_methods():
                return lambda generation=-1, **meta: self.run(name, generation, **meta)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def trace(pipe: Any, **options) -> Trace:
    """Trace the attention of ``pipe`` while it runs inside a ``with`` block.

    Args:
        pipe: a diffusers pipeline with a supported denoiser (see :mod:`attnscope.adapters`).
        layers: layer names or glob patterns to read (default: every cross-attention layer).
        factors: keep layers whose grid is the latent down-sampled by these factors (1, 2, 4, …).
        heads: head indices read in every layer, or ``{layer name: indices}``.
        steps: denoising calls to read, as a range, slice or ``(start, stop)`` (0-based).
        keep_steps: also keep each call's maps (memory grows with steps; off by default).
        keep_padding: keep padding tokens after the end token (off: stored maps cover the prompt).
        cfg: override the detection of a classifier-free-guidance batch.
        profile: time attnscope's own hooks per denoising call (``tc.profile.summary()``; see
            :mod:`attnscope.core.profile`); off by default, and free when off.
        concepts (and any other option a method registers): handed to that method's trace
            extension (:mod:`attnscope.core.extension`); ``concepts=["cat", "sky"]`` runs
            ConceptAttention's concept stream on SD3 / Flux (read with ``tc.concept_attention()``).

    Joint attention (SD3, Flux): the image queries' probabilities over the prompt keys are read,
    normalised over all keys as the model computes them; see ``docs/mmdit.md``.

    Returns:
        A :class:`Trace`; use it as a context manager, then read it with a method:
        ``tc.daam()`` (or ``tc.run("daam")``).
    """
    return Trace(pipe, **options)
