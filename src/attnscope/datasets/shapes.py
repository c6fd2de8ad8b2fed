"""ShapesWorld: a tiny procedural text-to-image dataset with exact word masks.

Every scene is a few flat-coloured shapes on a gray background, a caption that
describes them truthfully, and for each caption word that names an object or
an attribute the exact pixel mask of the object it refers to.

Example:
    >>> from attnscope.datasets.shapes import make_scene
    >>> s = make_scene(0, size=64)
    >>> s.image.shape, s.image.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> all(s.word_masks[i].any() for i in s.word_masks)
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
# Saturated, well-separated colours; backgrounds are always (near-)gray.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 225, 30),
    "purple": (150, 60, 200),
    "orange": (250, 140, 0),
    "cyan": (40, 205, 220),
}
SIZES: tuple[str, ...] = ("small", "large")
# Radius ranges as a fraction of the image side (scale-free).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.12, 0.16), "large": (0.22, 0.30)}
# relation key -> caption phrase; the key is the caption's 'position' word.
RELATIONS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
BACKGROUNDS: tuple[str, ...] = ("plain", "textured")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_SINGLE = ("{a}", "a picture of {a}", "an image of {a}")
_PAIR_REL = ("{a} {rel} {b}",)
_PAIR_AND = ("{a} and {b}",)
_TRIPLE = ("{a} {b} and {c}", "{a} and {b} and {c}")
_SEPARATION = 0.9  # min centre distance, in units of (r_i + r_j)
_MIN_VISIBLE = 0.7  # every object keeps at least this fraction of its pixels visible


@dataclass
class ShapeObject:
    """One drawn shape. ``center`` is (x, y) in pixels, ``radius`` the nominal radius."""

    shape: str
    color: str | None
    size: str | None
    center: tuple[float, float]
    radius: float


@dataclass
class Scene:
    """An image, its caption and exact per-object / per-word masks.

    ``masks[k]`` is the *visible* part of ``objects[k]`` (later objects occlude
    earlier ones), so masks are pairwise disjoint. ``word_masks`` maps the index
    of every caption word of kind 'shape', 'color' or 'size' to its object's
    mask. Position words ('left', 'right', 'above', 'below') appear in
    ``word_kinds`` as 'position' but deliberately get *no* mask: a relation
    word is about two objects, not one region. ``word_objects`` maps every
    kinded word to the object index it is about (for position words: the
    subject of the relation); ``relations`` lists (subject, key, object)
    triples such as (0, "left", 1).
    """

    image: np.ndarray
    caption: str
    objects: list[ShapeObject]
    masks: np.ndarray
    words: list[str]
    word_masks: dict[int, np.ndarray]
    word_kinds: dict[int, str]
    word_objects: dict[int, int] = field(default_factory=dict)
    relations: list[tuple[int, str, int]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``shape`` centred at (cx, cy); None for a circle.

    Example:
        >>> len(shape_points("star", 10, 10, 5))
        10
    """
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.85 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "diamond":
        h = 1.1 * r
        pts = [(0, -h), (h, 0), (0, h), (-h, 0)]
    elif shape == "triangle":
        R = 1.15 * r
        pts = [(R * np.cos(a), R * np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif shape == "star":
        R, ri = 1.15 * r, 0.575 * r
        pts = [(q * np.cos(a), q * np.sin(a)) for q, a in zip([R, ri] * 5, np.deg2rad(-90 + 36 * np.arange(10)))]
    elif shape == "cross":
        L, w = r, 0.26 * r
        pts = [(-w, -L), (w, -L), (w, -w), (L, -w), (L, w), (w, w),
               (w, L), (-w, L), (-w, w), (-L, w), (-L, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return [(cx + float(x), cy + float(y)) for x, y in pts]


def shape_extent(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the continuous shape.

    Example:
        >>> shape_extent("circle", 10, 10, 3)
        (7, 7, 13, 13)
    """
    pts = shape_points(shape, cx, cy, r)
    if pts is None:
        return (cx - r, cy - r, cx + r, cy + r)
    xs, ys = zip(*pts)
    return (min(xs), min(ys), max(xs), max(ys))


def render_coverage(shape: str, cx: float, cy: float, rx: float, ry: float, height: int, width: int,
                    k: int = 4) -> np.ndarray:
    """Fraction in [0, 1] of each pixel covered by ``shape`` (k x k supersampling).

    The unit shape is scaled by ``rx`` horizontally and ``ry`` vertically.
    Pixel (i, j) is the unit square centred at (x=j, y=i).

    Example:
        >>> float(render_coverage("square", 8, 8, 4, 4, 16, 16).sum().round(1))
        52.6
    """
    to = lambda x, y: ((cx + x * rx + 0.5) * k - 0.5, (cy + y * ry + 0.5) * k - 0.5)  # noqa: E731
    canvas = Image.new("L", (width * k, height * k), 0)
    draw = ImageDraw.Draw(canvas)
    pts = shape_points(shape, 0.0, 0.0, 1.0)
    if pts is None:
        draw.ellipse([*to(-1.0, -1.0), *to(1.0, 1.0)], fill=255)
    else:
        draw.polygon([to(x, y) for x, y in pts], fill=255)
    if k > 1:
        canvas = canvas.resize((width, height), Image.BOX)
    return np.asarray(canvas, dtype=np.float64) / 255.0


def render_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """Boolean mask of the pixels at least half covered by the shape.

    Example:
        >>> int(render_mask("square", 8, 8, 4, 16, 16).sum())
        49
    """
    return render_coverage(shape, cx, cy, r, r, height, width) >= 0.5


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    gray = rng.uniform(185, 225) if rng.random() < 0.5 else rng.uniform(30, 70)
    base = np.full((size, size, 3), gray, dtype=np.float64) + rng.uniform(-4, 4, size=3)
    if kind == "textured":
        if rng.random() < 0.5:
            tex = rng.normal(0.0, 4.0, size=(size, size))
        else:
            yy, xx = np.mgrid[0:size, 0:size]
            theta, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2) * size
            phase = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
            tex = 6.0 * np.sin(phase + rng.uniform(0, 2 * np.pi))
        base += tex[..., None]
    return np.clip(np.round(base), 0, 255).astype(np.uint8)


def _layout(rng: np.random.Generator, size: int, shapes: list[str], sizes: list[str]):
    """Rejection-sample radii and centres; downgrade to 'small' when crowded."""
    for _restart in range(30):
        placed: list[tuple[float, float, float]] = []
        out_sizes = list(sizes)
        for k, shape in enumerate(shapes):
            ok = False
            for attempt in range(80):
                if attempt == 40:
                    out_sizes[k] = "small"
                lo, hi = SIZE_RANGES[out_sizes[k]]
                r = rng.uniform(lo, hi) * size
                x0, y0, x1, y1 = shape_extent(shape, 0.0, 0.0, r)
                cx = rng.uniform(1 - x0, size - 2 - x1)
                cy = rng.uniform(1 - y0, size - 2 - y1)
                if all(np.hypot(cx - px, cy - py) >= _SEPARATION * (r + pr) for px, py, pr in placed):
                    placed.append((cx, cy, r))
                    ok = True
                    break
            if not ok:
                break
        if len(placed) == len(shapes):
            return placed, out_sizes
    raise RuntimeError("could not place objects; use fewer objects or a larger image")


def _relation(a: ShapeObject, b: ShapeObject) -> str:
    """The dominant-axis relation that is true of a w.r.t. b (image y grows downwards)."""
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def _phrase(obj: ShapeObject, k: int, with_size: bool) -> list[tuple[str, str | None, int | None]]:
    body = ([(obj.size, "size", k)] if with_size else []) + [(obj.color, "color", k), (obj.shape, "shape", k)]
    article = "an" if body[0][0][0] in "aeiou" else "a"
    return [(article, None, None)] + body


def _caption(rng, objects: list[ShapeObject], size_p: float):
    n = len(objects)
    phr = {f"{{{c}}}": _phrase(o, k, rng.random() < size_p) for k, (c, o) in enumerate(zip("abc", objects))}
    relations: list[tuple[int, str, int]] = []
    if n == 1:
        template = _SINGLE[rng.integers(len(_SINGLE))]
    elif n == 2 and rng.random() < 0.8:
        template = _PAIR_REL[rng.integers(len(_PAIR_REL))]
        rel = _relation(objects[0], objects[1])
        relations.append((0, rel, 1))
        phr["{rel}"] = [(w, "position" if w == rel else None, 0 if w == rel else None)
                        for w in RELATIONS[rel].split()]
    elif n == 2:
        template = _PAIR_AND[rng.integers(len(_PAIR_AND))]
    else:
        template = _TRIPLE[rng.integers(len(_TRIPLE))]
    tokens: list[tuple[str, str | None, int | None]] = []
    for part in template.split():
        tokens.extend(phr.get(part, [(part, None, None)]))
    return tokens, relations


def make_scene(rng_or_seed: int | np.random.Generator = 0, size: int = 64, n_objects: int | None = None,
               background: str | None = None, size_word_p: float = 0.5,
               unique_colors: bool = True) -> Scene:
    """Generate one scene, deterministically from a seed or a numpy Generator.

    Args:
        rng_or_seed: int seed or ``np.random.Generator`` (consumed).
        size: image side in pixels (all geometry scales with it).
        n_objects: 1-3, random when None.
        background: "plain", "textured" or None (random).
        size_word_p: probability that an object's size word is in the caption.
        unique_colors: all objects get different colours (keeps colour words
            unambiguous); otherwise only (colour, shape) pairs are unique.

    Example:
        >>> s = make_scene(3, size=48, n_objects=2, background="plain")
        >>> len(s.objects), s.masks.shape
        (2, (2, 48, 48))
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n}")
    kind = BACKGROUNDS[rng.integers(2)] if background is None else background
    if kind not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS} or None, got {kind!r}")
    names = list(COLORS)
    if unique_colors:
        colors = [names[i] for i in rng.permutation(len(names))[:n]]
        shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    else:
        combos = rng.permutation(len(names) * len(SHAPES))[:n]
        colors = [names[c // len(SHAPES)] for c in combos]
        shapes = [SHAPES[c % len(SHAPES)] for c in combos]
    sizes0 = [SIZES[i] for i in rng.integers(2, size=n)]
    for _try in range(20):  # re-layout while some object is mostly hidden
        placed, sizes = _layout(rng, size, shapes, sizes0)
        objects = [ShapeObject(s, c, z, (float(x), float(y)), float(r))
                   for s, c, z, (x, y, r) in zip(shapes, colors, sizes, placed)]
        full = np.stack([render_mask(o.shape, *o.center, o.radius, size, size) for o in objects])
        masks = full.copy()
        for k in range(1, n):
            masks[:k] &= ~full[k]
        if (masks.sum((1, 2)) >= _MIN_VISIBLE * full.sum((1, 2))).all():
            break
    image = _background(rng, size, kind)
    for k, o in enumerate(objects):
        image[masks[k]] = COLORS[o.color]

    tokens, relations = _caption(rng, objects, size_word_p)
    words = [t for t, _, _ in tokens]
    word_kinds = {i: kd for i, (_, kd, _) in enumerate(tokens) if kd is not None}
    word_objects = {i: k for i, (_, kd, k) in enumerate(tokens) if kd is not None}
    word_masks = {i: masks[word_objects[i]] for i, kd in word_kinds.items() if kd != "position"}
    return Scene(image=image, caption=" ".join(words), objects=objects, masks=masks, words=words,
                 word_masks=word_masks, word_kinds=word_kinds, word_objects=word_objects,
                 relations=relations, meta={"background": kind, "size": size})


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    # Fixed-length entropy: (salt, split, seed, index) -> disjoint streams per split.
    return np.random.default_rng([0x5EA9E5, SPLITS[split], int(seed), int(index)])


def scene_stream(seed: int, n: int | None = None, *, split: str = "train", **kw) -> Iterator[Scene]:
    """Yield ``n`` scenes (forever when None). Scene i depends only on (seed, split, i).

    Splits ("train", "val", "test") use disjoint random streams, so held-out
    scenes never share the seed of a training scene.

    Example:
        >>> [s.caption for s in scene_stream(0, 2)] == [s.caption for s in scene_stream(0, 2)]
        True
    """
    i = 0
    while n is None or i < n:
        scene = make_scene(_scene_rng(seed, split, i), **kw)
        scene.meta.update(split=split, seed=int(seed), index=i)
        yield scene
        i += 1


def make_scenes(seed: int, n: int, *, split: str = "train", **kw) -> list[Scene]:
    """List version of :func:`scene_stream`.

    Example:
        >>> len(make_scenes(0, 3, split="test", size=32))
        3
    """
    return list(scene_stream(seed, n, split=split, **kw))


def scene_tensor(scenes):
    """The scenes' images as a float ``(B, 3, H, W)`` torch tensor in [-1, 1], the range VAEs take.

    Example:
        >>> scene_tensor(make_scenes(0, 2)).shape
        torch.Size([2, 3, 64, 64])
    """
    import torch

    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_pixels(images) -> np.ndarray:
    """The inverse of :func:`scene_tensor`: ``(B, 3, H, W)`` in [-1, 1] to ``(B, H, W, 3)`` uint8, clamped and rounded."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)


def vocabulary() -> list[str]:
    """Sorted list of every word any caption may contain.

    Example:
        >>> {"red", "circle", "left", "a"} <= set(vocabulary())
        True
    """
    words = {"a", "an", *SHAPES, *COLORS, *SIZES}
    for phrase in RELATIONS.values():
        words.update(phrase.split())
    for t in _SINGLE + _PAIR_REL + _PAIR_AND + _TRIPLE:
        words.update(w for w in t.split() if not w.startswith("{"))
    return sorted(words)
