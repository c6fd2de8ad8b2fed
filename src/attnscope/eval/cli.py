"""``attnscope eval`` (segmentation benchmarks). Registered by :mod:`attnscope.cli`."""

from __future__ import annotations


def add_eval_parser(sub) -> None:
    return None
