"""attnscope: see and steer what each word of a prompt does inside a diffusion model.

Example:
    >>> import attnscope
    >>> with attnscope.trace(pipe) as tc:            # doctest: +SKIP
    ...     out = pipe("a red circle", num_inference_steps=20)
    >>> heat = tc.daam()                             # doctest: +SKIP
    >>> heat.word("circle", image=0).shape           # doctest: +SKIP
    torch.Size([64, 64])
"""

__version__ = "0.1.0"

__all__ = ["trace", "load", "__version__"]


def __getattr__(name):
    # Heavy imports (torch, diffusers) happen on first use, not at package import.
    if name == "trace":
        from .core.trace import trace

        return trace
    if name == "load":
        from .io import load

        return load
    raise AttributeError(f"module 'attnscope' has no attribute {name!r}")
