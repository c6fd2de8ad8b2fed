"""Attribution methods on the tracing core, found by name, and loading of their saved results.

Every method is a :class:`~attnscope.methods.base.Method` whose call returns a typed
:class:`~attnscope.methods.base.MapResult`; results save under their ``kind`` and
:func:`load` reads any of them back. The benchmark (``attnscope eval --methods NAME``) and
``Trace.run(NAME)`` use this registry. Third-party methods join with :func:`register_method`.

Example:
    >>> available_methods()
    ['concept_attention', 'daam', 'hrv-weighted', 'selective', 'selective-bottom']
    >>> get_method("daam")
    DAAM()
"""

from __future__ import annotations

import os

from ..hrv.vectors import HeadRelevance
from .base import MapResult, Method, threshold_map
from .concept_attention import ConceptAttention, ConceptAttentionResult, ConceptCrossAttention
from .concept_stream import ConceptStream
from .daam import DAAM, DAAMResult
from .selective import HRVWeighted, SelectiveBottom, SelectiveHeads, SelectiveResult

_METHODS: dict[str, type[Method]] = {m.name: m for m in (DAAM, SelectiveHeads, SelectiveBottom, HRVWeighted,
                                                          ConceptAttention, ConceptCrossAttention)}
_RESULTS: dict[str, type[MapResult]] = {DAAMResult.kind: DAAMResult, SelectiveResult.kind: SelectiveResult,
                                        ConceptAttentionResult.kind: ConceptAttentionResult,
                                        HeadRelevance.kind: HeadRelevance}  # head relevance vectors load by kind too
#: Options that methods add to ``attnscope.trace``: option name -> TraceExtension class.
_TRACE_OPTIONS: dict[str, type] = {"concepts": ConceptStream}


def register_trace_option(option: str, extension: type) -> None:
    """Make ``attnscope.trace(pipe, option=value)`` build ``extension(trace, value)`` (a
    :class:`~attnscope.core.extension.TraceExtension`) — how a method adds work to a trace."""
    _TRACE_OPTIONS[option] = extension


def trace_extension(option: str) -> type:
    """The extension class behind a trace option, or a one-line TypeError naming the valid options."""
    if option not in _TRACE_OPTIONS:
        raise TypeError(f"trace() got an unknown option {option!r}; besides its own options it accepts "
                        f"{', '.join(sorted(_TRACE_OPTIONS))} (added by methods).")
    return _TRACE_OPTIONS[option]


def register_method(method: type[Method]) -> type[Method]:
    """Class decorator: make ``method`` available by name and its results loadable by kind."""
    if not method.name or not method.result_type.kind:
        raise ValueError(f"{method.__name__} needs a `name` and a result type with a `kind`.")
    _METHODS[method.name] = method
    _RESULTS[method.result_type.kind] = method.result_type
    return method


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str, **options) -> Method:
    """A method object by name (``options`` go to its constructor)."""
    if name not in _METHODS:
        raise KeyError(f"Unknown method {name!r}; available: {', '.join(available_methods())}.")
    return _METHODS[name](**options)


def binarize(name: str, raw, threshold: float | None = None):
    """A method's un-normalised map (numpy) as a boolean mask, under that method's own threshold rule
    (:func:`attnscope.methods.base.threshold_map`; ``threshold`` defaults to the rule's τ)."""
    import numpy as np
    import torch

    rule = get_method(name).result_type.threshold_rule
    return threshold_map(torch.from_numpy(np.asarray(raw)), rule, threshold).numpy()


def load(path: str | os.PathLike) -> MapResult:
    """Load any saved attnscope result (its kind is recorded in the file).

    >>> attnscope.load("runs/cat").word("cat").shape     # doctest: +SKIP
    """
    from ..io import ResultFileError, read_result

    record, tensors = read_result(path)
    kind = record["kind"]
    if kind not in _RESULTS:
        raise ResultFileError(f"{path} holds a result of kind {kind!r}, which this attnscope cannot read "
                              f"(known kinds: {', '.join(sorted(_RESULTS))}); upgrade attnscope.")
    try:
        return _RESULTS[kind].from_saved(record, tensors)
    except ResultFileError as err:
        raise ResultFileError(f"{path}: {err}") from None


__all__ = ["ConceptAttention", "ConceptAttentionResult", "DAAM", "DAAMResult", "MapResult", "Method",
           "register_trace_option", "trace_extension", "available_methods", "get_method", "load", "register_method"]
