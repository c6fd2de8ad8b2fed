"""``attnscope generate --strengthen WORD:CONCEPT --adjust WORD:+WANTED:-UNWANTED [--hrv PATH]``.

Example:
    $ attnscope generate "a red circle" --strengthen circle:shape --hrv runs/hrv-shapes --out runs/strong
    $ attnscope generate "a vase in lavender color" --model CompVis/stable-diffusion-v1-4 \\
          --hrv runs/hrv-sd14 --adjust lavender:+colour:-plant --out runs/vase
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .common import CLIError


def add_steering_options(parser) -> None:
    parser.add_argument("--strengthen", action="append", metavar="WORD:CONCEPT",
                        help="scale WORD's attention per head by the HRV of CONCEPT (repeatable; default: none)")
    parser.add_argument("--adjust", action="append", metavar="WORD:+WANTED:-UNWANTED",
                        help="scale WORD's attention by 2·HRV(WANTED) − HRV(UNWANTED) (repeatable; default: none)")
    parser.add_argument("--hrv", help="saved head relevance vectors for --strengthen/--adjust "
                                      "(default: the model folder's hrv/)")


def check_steering(args) -> list[tuple[str, str, str, str | None]]:
    """The requested edits as ``(kind, word, concept, unwanted concept)``; bad syntax is a CLI error."""
    edits = []
    for spec in args.strengthen or []:
        word, sep, concept = spec.rpartition(":")
        if not sep or not word.strip() or not concept.strip():
            raise CLIError(f"--strengthen {spec!r} is not WORD:CONCEPT (e.g. circle:shape).")
        edits.append(("strengthen", word.strip(), concept.strip(), None))
    for spec in args.adjust or []:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[1].startswith("+") or not parts[2].startswith("-") \
                or not all(p.strip("+- ") for p in parts):
            raise CLIError(f"--adjust {spec!r} is not WORD:+WANTED:-UNWANTED (e.g. lavender:+colour:-plant).")
        edits.append(("adjust", parts[0].strip(), parts[1][1:].strip(), parts[2][1:].strip()))
    if edits and args.hrv is not None and not Path(args.hrv).is_dir():
        raise CLIError(f"--hrv {args.hrv} is not a folder; build one with `attnscope hrv build --out FOLDER`.")
    return edits


def steering_for(args, pipe, prompt_words) -> tuple:
    """``(context manager, record)``: the edits applied while generating, checked against the prompt's
    words and the HRV's concepts; a no-op context without edits."""
    from ..control.steer import steer
    from ..core.tokens import find_word
    from ..hrv.edits import adjust, strengthen
    from ..hrv.vectors import load_relevance, relevance_for
    from ..io import ResultFileError

    requested = check_steering(args)
    if not requested:
        return contextlib.nullcontext(), {}
    try:
        hrv = load_relevance(args.hrv) if args.hrv else relevance_for(pipe)
    except (LookupError, ResultFileError) as err:
        raise CLIError(f"{err} (give --hrv FOLDER)") from None
    edits = []
    for kind, word, concept, unwanted in requested:
        try:
            find_word(prompt_words, word)
        except KeyError:
            listed = " ".join(w.text for w in prompt_words)
            raise CLIError(f"--{kind} {word!r} is not in the prompt; its words are: {listed}") from None
        for name in (concept, unwanted):
            if name is not None and name not in hrv.concepts:
                raise CLIError(f"--{kind}: unknown concept {name!r}; the HRV has: {', '.join(hrv.concepts)}")
        edits.append(strengthen(hrv, word, concept) if kind == "strengthen" else adjust(hrv, word, concept, unwanted))
    try:
        context = steer(pipe, *edits)
    except ValueError as err:
        raise CLIError(str(err)) from None
    record = {"steering": [list(r) for r in requested], "hrv": str(args.hrv or "model folder")}
    return context, record
