"""The one error type of the training commands, and an argument parser that raises it.

Library functions raise :class:`TrainingError` with a one-line message saying what to do; only
each module's ``main()`` turns it into an error line on stderr and exit status 2.

    >>> ArgumentParser(prog="demo").parse_args(["--nope"])
    Traceback (most recent call last):
    ...
    training.errors.TrainingError: demo: unrecognized arguments: --nope
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class TrainingError(ValueError):
    """A training, export or reproduce step cannot go on; the message says what to pass or do instead."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors raise :class:`TrainingError` instead of exiting,
    so that ``reproduce`` can check every stage's arguments before it runs any stage."""

    def error(self, message: str):
        raise TrainingError(f"{self.prog}: {message}")



def run_command(run: Callable, parse_args: Callable | None = None, argv=None) -> None:
    """A command's ``main()``: parse (``parse_args``; None hands ``argv`` to ``run`` as it is), run,
    and turn a :class:`TrainingError` into one stderr line and exit status 2 (the only place the
    training code exits the process)."""
    try:
        run(argv if parse_args is None else parse_args(argv))
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
