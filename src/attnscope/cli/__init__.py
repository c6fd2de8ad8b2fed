"""The ``attnscope`` command line: argparse only; every command calls the library.

Example:
    $ attnscope generate "a red circle to the left of a blue square" --out runs/demo
    $ attnscope eval --protocol real --noise 0.5 --n 200 --out runs/eval-real
    $ attnscope compare runs/gate-a runs/gate-b
"""

from __future__ import annotations

import argparse
import sys

from .common import CLIError, HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    from .evaluate import add_compare_parser, add_eval_parser
    from .explain import add_explain_parser
    from .generate import add_generate_parser
    from .hrv import add_hrv_parser

    parser = argparse.ArgumentParser(prog="attnscope", description="See what each word of a prompt does inside a diffusion model.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    add_eval_parser(sub)
    add_compare_parser(sub)
    add_hrv_parser(sub)
    add_explain_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error prints one line on stderr and returns 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        print(f"attnscope: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnscope: interrupted; nothing written", file=sys.stderr)
        return 130


__all__ = ["CLIError", "build_parser", "main"]
