"""attnscope: see and steer what each word of a prompt does inside a diffusion model.

Example:
    >>> import attnscope
    >>> with attnscope.trace(pipe) as tc:            # doctest: +SKIP
    ...     out = pipe("a red circle", num_inference_steps=20)
    >>> heat = tc.daam()                             # doctest: +SKIP
    >>> heat.word("circle", image=0).shape           # doctest: +SKIP
    torch.Size([64, 64])
"""

from ._version import __version__

__all__ = ["trace", "load", "load_pipeline", "hrv", "steer", "weaken", "__version__"]


def __getattr__(name):
    # Heavy imports (torch, diffusers) happen on first use, not at package import.
    if name == "trace":
        from .core.trace import trace

        return trace
    if name == "load":
        from .methods import load

        return load
    if name == "load_pipeline":
        from .pipelines import load_pipeline

        return load_pipeline
    if name == "hrv":
        import importlib

        return importlib.import_module(".hrv", __name__)  # not `from . import hrv`: that calls back here
    if name in ("steer", "weaken"):
        from . import control

        return getattr(control, name)
    raise AttributeError(f"module 'attnscope' has no attribute {name!r}")
