"""Small figures drawn with PIL only: labelled panels side by side, a line chart and a heat map.

Example:
    >>> import torch
    >>> fig = side_by_side(None, [(torch.rand(8, 8), "top"), (torch.rand(8, 8), "bottom")])
    >>> fig.size[0] > fig.size[1]
    True
    >>> line_chart({"MoRHF": ([0, 1, 11], [1.0, 0.7, 0.2])}, x_label="k").size
    (480, 320)
    >>> matrix_image(torch.rand(2, 6), ["colour", "shape"], [("down", 2), ("up", 4)]).size[1] > 2 * CELL
    True
"""

from __future__ import annotations

import numpy as np

#: Panels are enlarged (nearest neighbour) to at least this many pixels a side, so tiny maps stay visible.
MIN_PANEL = 160
LABEL_HEIGHT = 16
CHART_SIZE = (480, 320)
CHART_MARGIN = 44
#: Side of one heat-map cell and width of its row labels, in pixels; wide maps (SDXL's 1,300 heads)
#: shrink their cells to fit about MAX_MAP_WIDTH pixels, and label only layers wide enough for text.
CELL, ROW_LABEL_WIDTH, MAX_MAP_WIDTH, MIN_LABELLED_WIDTH = 14, 80, 2800, 40
#: Line colours of the chart, cycled.
COLOURS = ((200, 40, 40), (40, 80, 220), (30, 150, 60), (220, 140, 0), (140, 50, 180))


def side_by_side(image, panels: list[tuple], alpha: float = 0.55):
    """The image (if any), then each ``(soft map in [0, 1], label)`` panel (overlaid on the image when
    given), with its label underneath."""
    from PIL import Image, ImageDraw

    from .overlay import colorize, overlay

    tiles = []
    if image is not None:
        tiles.append((Image.fromarray(np.asarray(image, dtype=np.uint8)), "image"))
    for soft, label in panels:
        tile = overlay(image, soft, alpha=alpha) if image is not None else Image.fromarray(colorize(soft.cpu().numpy()))
        tiles.append((tile, label))
    factor = max(1, -(-MIN_PANEL // min(tiles[0][0].size)))
    w, h = tiles[0][0].size[0] * factor, tiles[0][0].size[1] * factor
    canvas = Image.new("RGB", (w * len(tiles), h + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(tiles):
        canvas.paste(tile.resize((w, h), Image.NEAREST), (i * w, 0))
        draw.text((i * w + 3, h + 2), label, fill="black")
    return canvas


def line_chart(series: dict, *, x_label: str = "", y_label: str = "", title: str = ""):
    """``{label: (xs, ys)}`` as lines on one axis, with a legend; returns a PIL image."""
    from PIL import Image, ImageDraw

    width, height = CHART_SIZE
    canvas = Image.new("RGB", CHART_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [y for _, ys in series.values() for y in ys]
    x0, x1 = min(xs_all, default=0), max(xs_all, default=1)
    y0, y1 = min(ys_all + [0.0]), max(ys_all + [1e-9])
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, top, right, bottom = CHART_MARGIN, CHART_MARGIN // 2, width - CHART_MARGIN // 2, height - CHART_MARGIN

    def point(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text((left, bottom + 4), f"{x0:g}", fill="black")
    draw.text((right - 24, bottom + 4), f"{x1:g}", fill="black")
    draw.text((2, bottom - 10), f"{y0:.3g}", fill="black")
    draw.text((2, top), f"{y1:.3g}", fill="black")
    draw.text(((left + right) // 2 - 3 * len(x_label), bottom + 18), x_label, fill="black")
    draw.text((2, top + 14), y_label, fill="black")
    draw.text((left, 2), title, fill="black")
    for i, (label, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [point(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((right - 70 * (len(series) - i), height - 14), label, fill=colour)  # legend under the axis
    return canvas


def matrix_image(values, row_labels: list[str], column_groups: list[tuple[str, int]], *, title: str = ""):
    """A heat map of ``values`` (rows, columns), white at 0 to dark red at the maximum, each cell
    printed with its value's colour only; ``column_groups`` ``[(label, n columns), ...]`` name runs of
    columns (e.g. the heads of one layer), separated by lines. Returns a PIL image."""
    from PIL import Image, ImageDraw

    values = np.asarray(values, dtype=np.float64)
    rows, columns = values.shape
    if len(row_labels) != rows or sum(n for _, n in column_groups) != columns:
        raise ValueError(f"Labels ({len(row_labels)} rows, {sum(n for _, n in column_groups)} columns) do not "
                         f"match the values' shape {values.shape}.")
    top = LABEL_HEIGHT * 2
    width = max(1, min(CELL, MAX_MAP_WIDTH // max(1, columns)))  # cell width; rows keep CELL pixels
    canvas = Image.new("RGB", (ROW_LABEL_WIDTH + columns * width + 60, top + rows * CELL + 3 * LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill="black")
    peak = values.max() if values.size and values.max() > 0 else 1.0
    for r in range(rows):
        draw.text((2, top + r * CELL + 1), row_labels[r][: ROW_LABEL_WIDTH // 6], fill="black")
        for c in range(columns):
            level = float(np.clip(values[r, c] / peak, 0.0, 1.0))
            colour = (255 - int(80 * level), int(255 * (1 - level)), int(255 * (1 - level)))
            x, y = ROW_LABEL_WIDTH + c * width, top + r * CELL
            draw.rectangle((x, y, x + width - 1, y + CELL - 1), fill=colour)
    x, bottom = ROW_LABEL_WIDTH, top + rows * CELL
    for i, (label, n) in enumerate(column_groups):
        draw.line((x, top, x, bottom), fill="black")
        if n * width >= MIN_LABELLED_WIDTH or width == CELL:
            draw.text((x + 1, bottom + 2 + LABEL_HEIGHT * (i % 2)), label, fill="black")
        x += n * width
    draw.line((x, top, x, bottom), fill="black")
    draw.text((x + 4, top), f"max {peak:.2f}", fill="black")
    return canvas
