"""Diagnostics of a pipeline's parts (not attribution methods): see :mod:`attnscope.analysis.identity`."""

from .identity import DEFAULT_PROMPTS, IdentityReport, collapsed, encoder_identity

__all__ = ["DEFAULT_PROMPTS", "IdentityReport", "collapsed", "encoder_identity"]
