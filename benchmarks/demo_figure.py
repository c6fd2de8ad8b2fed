"""The Quick start demo as one figure: the image, each object word's overlay and its mask (with the
share of the image the mask covers), from an ``attnscope generate`` output folder.

    attnscope generate "a red circle to the left of a blue square" --out runs/demo-unet
    python benchmarks/demo_figure.py runs/demo-unet docs/results/demo-unet.png

Prints each word's mask coverage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WORDS = ("red", "circle", "blue", "square")
CELL = 128
LABEL = 32


def tile(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB").resize((CELL, CELL), Image.NEAREST)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="an `attnscope generate --out` folder")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--words", nargs="+", default=list(WORDS))
    args = parser.parse_args()
    canvas = Image.new("RGB", (CELL * (len(args.words) + 1), 2 * CELL + LABEL), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(tile(args.folder / "image.png"), (0, 0))
    draw.text((4, 2 * CELL + 4), "image", fill="black")
    for i, word in enumerate(args.words, start=1):
        mask = np.asarray(Image.open(args.folder / f"mask_{word}.png").convert("L")) > 127
        canvas.paste(tile(args.folder / f"overlay_{word}.png"), (i * CELL, 0))
        canvas.paste(tile(args.folder / f"mask_{word}.png"), (i * CELL, CELL))
        draw.text((i * CELL + 4, 2 * CELL + 4), f"{word}: mask {mask.mean():.0%}", fill="black")
        print(f"{word}: mask covers {mask.mean():.1%} of the image")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)


if __name__ == "__main__":
    main()
