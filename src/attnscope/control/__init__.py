"""Attention control: edits that rescale chosen tokens' attention in chosen heads while a pipeline runs.

Example:
    >>> import attnscope                                                            # doctest: +SKIP
    >>> edit = attnscope.weaken(heads=[0, 1, 2], factor=-2.0)                       # doctest: +SKIP
    >>> with attnscope.steer(pipe, edit):                                           # doctest: +SKIP
    ...     pipe("a red circle")

HRV-based edits (strengthening, adjusting) are built in :mod:`attnscope.hrv` on :func:`scale`.
"""

from .edits import WEAKEN_FACTOR, Edit, TokenScale, in_window, scale, weaken
from .hooks import CallState, LayerHooks, SDPACall, SDPAOverride
from .steer import Steering, layout_of, steer

__all__ = ["WEAKEN_FACTOR", "CallState", "Edit", "LayerHooks", "SDPACall", "SDPAOverride", "Steering",
           "TokenScale", "in_window", "layout_of", "scale", "steer", "weaken"]
