"""Run a handler at every attention layer's SDPA call while a pipeline runs; the base of every edit.

:class:`LayerHooks` is a context manager that installs PyTorch module hooks only: a pre-hook on the
text encoder keeps the prompt's token ids, a pre-hook on the denoiser counts denoising calls (and
notices a new pipeline call), and a pre/post hook pair on each attention layer enters an
:class:`SDPAOverride` — a ``TorchFunctionMode`` that hands the layer's first
``F.scaled_dot_product_attention`` call to ``handler(layer, state, call)``. The handler returns the
attention output to use instead, or None to let the original call run. Every hook is removed when
the block exits, also when the pipeline raises.

Example:
    >>> def show(layer, state, call):                             # doctest: +SKIP
    ...     print(layer.name, state.index, call.query.shape)
    >>> with LayerHooks(pipe, show):                              # doctest: +SKIP
    ...     pipe("a red circle", num_inference_steps=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..core.layers import LayerInfo, assign_head_offsets
from ..core.tap import FirstSDPAMode, sdpa_arguments


@dataclass
class CallState:
    """What is known about the denoising call in progress.

    Attributes:
        run: pipeline calls seen so far, minus one (0 for the first).
        index: 0-based denoising call within the pipeline call.
        total: denoising calls the scheduler plans (``len(scheduler.timesteps)``), or None.
        cfg: whether the batch is [unconditional; conditional].
        batch: rows of the denoiser batch.
        latent_hw: the latent's (height, width).
        prompt_ids: ``(prompts, tokens)`` ids the text encoder saw in this pipeline call, or None.
    """

    run: int = -1
    index: int = -1
    timestep: float | None = None
    total: int | None = None
    cfg: bool = False
    batch: int = 0
    latent_hw: tuple[int, int] = (0, 0)
    prompt_ids: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return self.batch // 2 if self.cfg else self.batch

    def conditional_rows(self) -> slice:
        """Rows of the denoiser batch that carry the prompt (the second half under CFG)."""
        return slice(self.n_images, self.batch) if self.cfg else slice(0, self.batch)

    def prompt_of_image(self, image: int) -> int:
        """The prompt of conditional row ``image`` (diffusers repeats each prompt in place)."""
        prompts = 1 if self.prompt_ids is None else int(self.prompt_ids.shape[0])
        return image // max(1, self.n_images // prompts)


class SDPACall:
    """One intercepted ``scaled_dot_product_attention`` call: its tensors and the original call."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict):
        self.func, self.args, self.kwargs = func, args, kwargs
        self.query, self.key, self.mask, self.scale = sdpa_arguments(args, kwargs)
        self.value = args[2] if len(args) > 2 else kwargs["value"]

    def original(self) -> torch.Tensor:
        """The unmodified call's output (outer modes, e.g. a trace's tap, see this call)."""
        return self.func(*self.args, **self.kwargs)

    def scores(self, rows: slice | int, heads: torch.Tensor | None = None, key_major: bool = False) -> torch.Tensor:
        """float32 ``q kᵀ · scale + mask`` of batch ``rows`` (and ``heads``): ``(..., queries, keys)``, or
        ``(..., keys, queries)`` with ``key_major`` (faster to reduce over keys: the reduction then runs
        along contiguous query rows).

        Differentiable: gradients flow to q and k when they require them.
        """
        q, k, mask = self.query[rows], self.key[rows], self.mask
        if heads is not None and len(heads) != q.shape[-3]:
            q, k = q.index_select(-3, heads), k.index_select(-3, heads)
        k = k.float() * self.scale
        scores = torch.matmul(k, q.float().transpose(-1, -2)) if key_major else torch.matmul(q.float(), k.transpose(-1, -2))
        if mask is not None:
            if mask.dim() == 4 and mask.shape[0] == self.query.shape[0]:
                mask = mask[rows]
            if heads is not None and mask.dim() >= 3 and mask.shape[-3] == self.query.shape[1]:
                mask = mask.index_select(-3, heads)
            mask = mask.transpose(-1, -2) if key_major and mask.dim() >= 2 else mask
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        return scores

    def probabilities(self, rows: slice | int, heads: torch.Tensor | None = None) -> torch.Tensor:
        """The attention probabilities ``softmax(scores)`` of :meth:`scores`' rows and heads."""
        return self.scores(rows, heads).softmax(dim=-1)


Handler = Callable[[LayerInfo, CallState, SDPACall], "torch.Tensor | None"]


class SDPAOverride(FirstSDPAMode):
    """Hands the first SDPA call made while active to ``handler``; other calls pass unchanged."""

    def __init__(self, handler: Callable[[SDPACall], "torch.Tensor | None"]):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.first_call(func):
            out = self.handler(SDPACall(func, args, kwargs))
            if out is not None:
                return out
        return func(*args, **kwargs)


#: Denoiser families whose traced layers are pure cross-attention (keys = prompt tokens), which the
#: edits and HRV construction assume; MM-DiT joint attention mixes image keys in.
CROSS_ATTENTION_FAMILIES = ("unet",)


def model_layers(pipe: Any, adapter: Any = None) -> tuple[Any, list[tuple[LayerInfo, torch.nn.Module]]]:
    """``(adapter, [(layer, module)])`` of ``pipe`` with global head offsets assigned."""
    from ..adapters import UnsupportedPipelineError, adapter_for

    adapter = adapter or adapter_for(pipe)
    if adapter.family not in CROSS_ATTENTION_FAMILIES:
        raise UnsupportedPipelineError(
            f"Head steering and head relevance need cross-attention layers (UNet pipelines: Stable Diffusion 1.x, "
            f"2.x, XL); {type(pipe).__name__} uses joint attention ({adapter.family}), which they do not support yet.")
    found = adapter.attention_layers()
    assign_head_offsets([info for info, _ in found])
    return adapter, found


class LayerHooks:
    """Context manager: ``handler(layer, state, call)`` at each attention layer's first SDPA call.

    Args:
        pipe: a diffusers pipeline with a supported denoiser.
        handler: returns the attention output to use, or None for the original.
        layers: names of the layers to hook (default: every layer the adapter lists).
        cfg: override the adapter's detection of a classifier-free-guidance batch.
        on_call: called with the :class:`CallState` at the start of every denoising call.
    """

    def __init__(self, pipe: Any, handler: Handler, *, layers=None, cfg: bool | None = None,
                 on_call: Callable[[CallState], None] | None = None, adapter: Any = None):
        self.pipe = pipe
        self.adapter, found = model_layers(pipe, adapter)
        self.layers = [info for info, _ in found]
        wanted = None if layers is None else set(layers)
        self._modules = [(info, module) for info, module in found if wanted is None or info.name in wanted]
        self.handler = handler
        self.cfg = cfg
        self.on_call = on_call
        self.state = CallState()
        self._pending: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> "LayerHooks":
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    def _install(self) -> None:
        self._handles.append(self.adapter.denoiser().register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
        encoder, _ = self.adapter.text_encoder()
        if encoder is not None:
            self._handles.append(encoder.register_forward_pre_hook(self._on_encoder, with_kwargs=True))
        for info, module in self._modules:
            mode = SDPAOverride(lambda call, info=info: self.handler(info, self.state, call))
            self._handles.append(module.register_forward_pre_hook(_enter(mode)))
            self._handles.append(module.register_forward_hook(_leave(mode), always_call=True))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_encoder(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if self._pending is None and torch.is_tensor(ids):
            self._pending = ids.detach().to("cpu")

    def _on_denoiser(self, module, args, kwargs) -> None:
        sample, timestep = self.adapter.denoiser_inputs(args, kwargs)
        state = self.state
        restarted = state.timestep is not None and timestep is not None and timestep > state.timestep
        if state.run < 0 or self._pending is not None or restarted:
            cfg = self.cfg if self.cfg is not None else self.adapter.uses_cfg()
            if cfg is None:
                raise RuntimeError(f"Cannot tell whether {type(self.pipe).__name__} batches classifier-free "
                                   "guidance; pass cfg=True or cfg=False.")
            timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
            self.state = state = CallState(
                run=state.run + 1, cfg=bool(cfg), batch=int(sample.shape[0]),
                total=None if timesteps is None else len(timesteps),
                latent_hw=self.adapter.latent_hw(sample), prompt_ids=self._pending)
            self._pending = None
        state.index += 1
        state.timestep = timestep
        if self.on_call is not None:
            self.on_call(state)


def _enter(mode: SDPAOverride):
    def hook(module, args) -> None:  # returns None: the module's inputs stay as they are
        mode.__enter__()

    return hook


def _leave(mode: SDPAOverride):
    def hook(module, args, output) -> None:
        mode.__exit__(None, None, None)

    return hook
