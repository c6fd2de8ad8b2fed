"""What the benchmark scripts share for their reports: a markdown table of flat rows, and printing a
report while also writing it to ``--out``.

    >>> print("\\n".join(markdown_rows([{"k": 1, "mIoU": 0.5}])))
    | k | mIoU |
    |---|---|
    | 1 | 0.500 |
"""

from __future__ import annotations

from pathlib import Path


def markdown_rows(rows: list[dict]) -> list[str]:
    """``rows`` (dicts with the same keys) as markdown table lines; floats to three decimals."""
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
                    for r in rows]


def emit(text: str, out: Path | None) -> None:
    """Print ``text``; with ``out``, also write it there (its folder made)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
