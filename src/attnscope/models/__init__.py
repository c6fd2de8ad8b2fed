"""Training code of the shipped models (moving to the top-level ``training/`` folder)."""

from ..pipelines import WEIGHTS  # noqa: F401
