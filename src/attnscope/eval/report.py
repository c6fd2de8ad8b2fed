"""Benchmark reports: JSON, a Markdown table, and a grid of example figures.

Example:
    >>> print(markdown_table({"all": {"pairs": 1, "rows": {"daam": {"mIoU_per_pair": 0.5}}}}))  # doctest: +NORMALIZE_WHITESPACE
    | words | method | mIoU (per pair) | mIoU (pooled) | pixel acc | mAP | τ |
    |---|---|---|---|---|---|---|
    | all (1) | daam | 0.500 | — | — | — | — |
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLUMNS = (("mIoU_per_pair", "mIoU (per pair)"), ("mIoU_pooled", "mIoU (pooled)"), ("pixel_acc", "pixel acc"),
           ("mAP", "mAP"), ("threshold", "τ"))


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(table: dict) -> str:
    lines = ["| words | method | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for group, block in table.items():
        for name, row in block["rows"].items():
            cells = " | ".join(_fmt(row.get(key)) for key, _ in COLUMNS)
            lines.append(f"| {group} ({block['pairs']}) | {name} | {cells} |")
    return "\n".join(lines)


#: Header entries too long for the markdown list (``per_head``: one value per head; the markdown has its table).
JSON_ONLY = ("per_head",)


def write_report(out: Path, header: dict, table: dict, extra_markdown: str = "", per_image: list | None = None) -> None:
    """``results.json`` holds everything; ``results.md`` the header and table (``per_image`` records,
    which let ``attnscope compare`` pair two gates, go to the JSON only)."""
    out.mkdir(parents=True, exist_ok=True)
    extra_json = {} if per_image is None else {"per_image": per_image}
    (out / "results.json").write_text(json.dumps({**header, **extra_json, "table": table}, indent=1, default=float))
    lines = [f"# {header.get('title', 'Segmentation benchmark')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k not in ("title", *JSON_ONLY)]
    if table:  # a quality-gate-only run scores no maps, so it has no table
        lines += ["", markdown_table(table)]
    lines += ["", extra_markdown]
    (out / "results.md").write_text("\n".join(lines).rstrip() + "\n")


def example_grid(pairs, images, method: str, path: Path, n: int = 8, cell: int = 96) -> None:
    """Rows of (image, ground truth, soft map, mask) for the first ``n`` pairs."""
    from PIL import Image, ImageDraw

    from ..viz.overlay import colorize
    from .runner import binarize

    rows = []
    for pair in pairs[:n]:
        image = images[pair.image]
        soft = pair.soft[method]
        norm = (soft - soft.min()) / max(float(soft.max() - soft.min()), 1e-8)
        mask = binarize(method, soft)
        tiles = [image, np.repeat(pair.gt[..., None] * 255, 3, -1).astype(np.uint8), colorize(norm),
                 np.repeat(mask[..., None] * 255, 3, -1).astype(np.uint8)]
        row = np.concatenate([np.asarray(Image.fromarray(t).resize((cell, cell), Image.NEAREST)) for t in tiles], 1)
        labelled = Image.fromarray(row)
        ImageDraw.Draw(labelled).text((2, 2), pair.word, fill=(255, 255, 255))
        rows.append(np.asarray(labelled))
    if rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, 0)).save(path)


def sample_grid(images, records, path: Path, n: int = 24, columns: int = 8, cell: int = 96) -> None:
    """The first ``n`` generated images, framed green where the detector passed them, red where not."""
    from PIL import Image

    tiles = []
    for image, record in list(zip(images, records))[:n]:
        tile = np.asarray(Image.fromarray(image).resize((cell, cell), Image.NEAREST)).copy()
        frame = (40, 200, 40) if record["match"] else (220, 40, 40)
        tile[:3], tile[-3:], tile[:, :3], tile[:, -3:] = frame, frame, frame, frame
        tiles.append(tile)
    if not tiles:
        return
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    path.with_suffix(".txt").write_text("\n".join(r["caption"] for r in records[:n]) + "\n")
