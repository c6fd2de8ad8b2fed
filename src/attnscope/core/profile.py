"""Direct measurement of what tracing costs: the time spent inside attnscope per denoising call.

``attnscope.trace(pipe, profile=True)`` installs timed versions of the trace's hooks; without it
the plain hooks are installed and nothing is timed, so profiling costs nothing when off. Three
parts are timed, each with ``time.perf_counter`` around attnscope's own Python code:

- ``observer``: reading q and k at the SDPA call: attention probabilities and their running sum;
- ``dispatch``: the attention tap's ``__torch_function__`` for every other torch call inside a
  traced attention module (the Python part; the C++ mode check before it is not included);
- ``hooks``: the module hooks (denoiser, text encoder, decoder, entering and leaving attention modules);
- ``extension``: what methods add to a trace through :mod:`attnscope.core.extension` (e.g.
  ConceptAttention's concept stream), registered with ``trace.timed`` or ``trace.tap``.

Each denoising call's wall time is measured from the denoiser's pre-hook to its forward hook, so
``fraction = attnscope / call`` is the share of the (traced) call spent in attnscope.

Example:
    >>> with attnscope.trace(pipe, profile=True) as tc:          # doctest: +SKIP
    ...     pipe("a cat", num_inference_steps=10)
    >>> tc.profile.summary()["fraction"]                         # doctest: +SKIP
    0.012
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

PARTS = ("observer", "dispatch", "hooks", "extension")


class HookProfile:
    """Per-denoising-call timings of attnscope's hooks (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []
        self._start: float | None = None
        self._current = dict.fromkeys(PARTS, 0.0)

    def add(self, part: str, seconds: float) -> None:
        self._current[part] += seconds

    def timed(self, fn: Callable, part: str) -> Callable:
        """``fn`` with its run time added to ``part``."""

        def timed_fn(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._current[part] += time.perf_counter() - start

        return timed_fn

    def call_started(self, *_args, **_kwargs) -> None:
        self._start = time.perf_counter()
        self._current = dict.fromkeys(PARTS, 0.0)

    def call_ended(self, *_args, **_kwargs) -> None:
        if self._start is None:
            return
        record = dict(self._current, call=time.perf_counter() - self._start)
        record["attnscope"] = sum(record[p] for p in PARTS)
        self.calls.append(record)
        self._start = None

    def summary(self, skip_first: int = 0) -> dict:
        """Medians over denoising calls (after ``skip_first`` warm-up calls) and the attnscope share."""
        calls = self.calls[skip_first:]
        if not calls:
            raise RuntimeError("No denoising call was profiled; run the pipeline inside the trace first.")
        keys = ("call", "attnscope") + PARTS
        out = {f"{k}_s": statistics.median(c[k] for c in calls) for k in keys}
        fractions = [c["attnscope"] / c["call"] for c in calls]
        out.update(calls=len(calls), fraction=statistics.median(fractions),
                   fraction_min=min(fractions), fraction_max=max(fractions))
        return out
