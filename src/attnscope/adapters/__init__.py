"""Registry of per-architecture adapters.

Example:
    >>> from attnscope.adapters import adapter_for
    >>> adapter_for(object())                                # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    attnscope.adapters.UnsupportedPipelineError: object is not supported: attnscope traces diffusers pipelines whose denoiser is a UNet2DConditionModel (Stable Diffusion 1.x, 2.x, XL); ... SD3Transformer2DModel (Stable Diffusion 3, 3.5); ... FluxTransformer2DModel (Flux.1).

Built-in adapters: :mod:`.unet` (SD 1.x / 2.x / XL), :mod:`.sd3` (SD3, SD3.5), :mod:`.flux` (Flux.1);
:mod:`.mmdit` holds what the two MM-DiT families share.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter

_ADAPTERS: list[type[Adapter]] = []


class UnsupportedPipelineError(TypeError):
    """The pipeline's denoiser has no attnscope adapter."""


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available to :func:`adapter_for`."""
    if cls not in _ADAPTERS:
        _ADAPTERS.append(cls)
    return cls


def registered_adapters() -> list[type[Adapter]]:
    """The built-in adapters, then those added with :func:`register_adapter`."""
    return _builtin() + [cls for cls in _ADAPTERS if cls not in _builtin()]


def adapter_for(pipe: Any) -> Adapter:
    """Return an adapter instance for ``pipe`` or raise a one-line error naming what is supported."""
    for cls in registered_adapters():
        if cls.supports(pipe):
            return cls(pipe)
    supported = "; ".join(c.description for c in registered_adapters())
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} is not supported: attnscope traces {supported}."
    )


def _builtin() -> list[type[Adapter]]:
    from .flux import FluxAdapter  # imported on first use: diffusers is heavy
    from .sd3 import SD3Adapter
    from .unet import UNetAdapter

    return [UNetAdapter, SD3Adapter, FluxAdapter]


__all__ = ["Adapter", "UnsupportedPipelineError", "adapter_for", "register_adapter", "registered_adapters"]
