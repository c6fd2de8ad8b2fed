"""Trace extensions: what a method adds to a trace without the core knowing the method.

Some methods need more than the attention probabilities the core stores: ConceptAttention runs a
stream of concept tokens beside the prompt through the joint blocks. Such a method registers a
*trace option* (``attnscope.trace(pipe, concepts=[...])``) whose value builds a
:class:`TraceExtension`. The core creates it when the trace is created (before any hook exists,
so the extension may run the pipeline's encoders), calls :meth:`TraceExtension.install` after its
own hooks are in place, and removes everything the extension registered through it on exit.

What the core offers an extension (all on :class:`~attnscope.core.trace.Trace`):

- ``trace.hook(handle)``: keep a module-hook handle; removed when the ``with`` block exits;
- ``trace.timed(fn)``: ``fn`` as it should be registered as a hook, so that
  ``trace(..., profile=True)`` counts its time as the extension's (unchanged when not profiling);
- ``trace.tap(module, layer, observer)``: an :class:`~attnscope.core.tap.OutputTap` on ``module``:
  ``observer(q, k, v, mask, scale, output)`` after its first SDPA call (output unchanged);
- ``trace.active_generation()``: the :class:`~attnscope.core.store.Generation` being recorded, or
  None when the current denoising call is outside ``steps=``; an extension stores its results in
  ``generation.extras[name]``;
- ``trace.paused()``: a context in which the pipeline's text encoders may run without their ids
  being taken for the prompt (ConceptAttention encodes its concepts at the first denoising call,
  padded like the traced prompt);
- ``trace.adapter``: the family's adapter (image rows, prompt keys, block conditioning …).

Hooks an extension registers on the denoiser run after the core's, so the generation of the
current call already exists.

Example (a toy extension that counts joint-attention calls)::

    class CountCalls(TraceExtension):
        name = "count"
        def install(self, trace):
            for info, module in trace.adapter.attention_layers():
                trace.tap(module, info, lambda *a: self.bump(trace))
        def bump(self, trace):
            gen = trace.active_generation()
            if gen is not None:
                gen.extras["count"] = gen.extras.get("count", 0) + 1
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from .tap import OutputTap


class TraceExtension:
    """Base class of trace extensions (see the module docstring).

    Subclasses take ``(trace, value)`` — the trace being created and the value of their trace
    option — and validate the value in ``__init__`` so that bad input fails before anything runs.
    """

    #: The key under which the extension stores its results in ``Generation.extras``.
    name: str = ""

    def __init__(self, trace: Any, value: Any):
        self.value = value

    def install(self, trace: Any) -> None:
        """Register hooks and taps through ``trace``; called once per ``with`` block."""
        raise NotImplementedError


class ExtensionHost:
    """What :class:`~attnscope.core.trace.Trace` offers extensions (a mixin; the trace supplies
    ``_handles``, ``_paused``, ``generations``, ``steps`` and its module enter/leave hooks)."""

    def hook(self, handle) -> None:
        """Keep a hook handle (from ``register_forward_*hook``) so the trace removes it on exit."""
        self._handles.append(handle)

    def timed(self, fn):
        """``fn`` timed as the ``extension`` part of the trace's profile, or ``fn`` itself when the
        trace does not profile."""
        return fn if self.profile is None else self.profile.timed(fn, "extension")

    def tap(self, module: torch.nn.Module, layer, observer) -> None:
        """Call ``observer(query, key, value, attn_mask, scale, output)`` after the first SDPA call of
        every forward of ``module`` (an :class:`~attnscope.core.tap.OutputTap`); removed on exit."""
        tap = OutputTap(self.timed(observer))
        self.hook(module.register_forward_pre_hook(self._enter_hook(tap)))
        # modes leave in the reverse order they entered: this tap is inside any the core put on the module
        self.hook(module.register_forward_hook(self._leave_hook(tap, layer), always_call=True, prepend=True))

    @contextmanager
    def paused(self):
        """Run pipeline modules (an extension encoding its own words) without recording their inputs
        as the prompt: the text-encoder hooks ignore calls made inside this block."""
        before, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = before

    def active_generation(self):
        """The generation being recorded, if the current denoising call is one the trace reads."""
        gen = self.generations[-1] if self.generations else None
        return gen if gen is not None and not gen.closed and gen.accepts_step(self.steps) else None
