"""A small, dependency-free detector for ShapesWorld images (clean or generated).

Pipeline: estimate the background as the median border colour; explain every
pixel as a mix ``alpha * palette + (1 - alpha) * background`` and give it the
palette colour with the smallest residual (or "background" when alpha < 0.5 or
the residual is large); label 4-connected same-colour components; drop tiny
ones; fill their background holes; classify the shape by analysis by
synthesis on the component's soft mixing weights: every shape template, at a
few candidate blur levels, is fitted to the weights' centroid and second
moments, and the best soft IoU wins (robust to blur, noise and mild stretch).

Example:
    >>> from attnscope.datasets.shapes import make_scene
    >>> s = make_scene(1, size=64)
    >>> dets = detect(s.image)
    >>> matches_caption(dets, s.objects)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from .shapes import COLORS, SHAPES, make_scenes, render_coverage, render_mask

_PALETTE = np.array(list(COLORS.values()), dtype=np.float64)
_NAMES = list(COLORS)


@dataclass
class Detection:
    """One detected object: colour name, best-matching shape, full-image mask."""

    color: str
    shape: str
    mask: np.ndarray
    area: int
    center: tuple[float, float]  # (x, y)
    score: float  # soft IoU of the best shape template, in [0, 1]


def connected_components(classes: np.ndarray, background: int = -1) -> tuple[np.ndarray, int]:
    """4-connected components of equal, non-background values.

    Returns (labels, n) with labels in 0..n (0 = background).

    Example:
        >>> lab, n = connected_components(np.array([[0, 0, -1, 1], [-1, 0, -1, 1]]))
        >>> n, lab.tolist()
        (2, [[1, 1, 0, 2], [0, 1, 0, 2]])
    """
    classes = np.asarray(classes)
    h, w = classes.shape
    fg = classes != background
    big = h * w
    lab = np.where(fg, np.arange(big).reshape(h, w), big)
    right = fg[:, :-1] & fg[:, 1:] & (classes[:, :-1] == classes[:, 1:])
    down = fg[:-1, :] & fg[1:, :] & (classes[:-1, :] == classes[1:, :])
    flat_fg = fg.ravel()
    while True:
        new = lab.copy()
        new[:, :-1] = np.where(right, np.minimum(new[:, :-1], lab[:, 1:]), new[:, :-1])
        new[:, 1:] = np.where(right, np.minimum(new[:, 1:], lab[:, :-1]), new[:, 1:])
        new[:-1, :] = np.where(down, np.minimum(new[:-1, :], lab[1:, :]), new[:-1, :])
        new[1:, :] = np.where(down, np.minimum(new[1:, :], lab[:-1, :]), new[1:, :])
        flat = new.ravel()
        for _ in range(4):  # pointer jumping: every label is a pixel of the same component
            flat[flat_fg] = flat[flat[flat_fg]]
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.zeros(big, dtype=np.int64)
    if flat_fg.any():
        _, inv = np.unique(lab.ravel()[flat_fg], return_inverse=True)
        out[flat_fg] = inv.ravel() + 1
        return out.reshape(h, w), int(inv.max()) + 1
    return out.reshape(h, w), 0


def estimate_background(image: np.ndarray, border: int = 2) -> np.ndarray:
    """Median colour of the ``border``-pixel frame (robust to objects touching it)."""
    img = np.asarray(image, dtype=np.float64)
    frame = np.concatenate([img[:border].reshape(-1, 3), img[-border:].reshape(-1, 3),
                            img[:, :border].reshape(-1, 3), img[:, -border:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def classify_pixels(image: np.ndarray, background: np.ndarray | None = None,
                    max_residual: float = 70.0, min_alpha: float = 0.5, return_alpha: bool = False):
    """Per-pixel palette index (order of ``COLORS``) or -1 for background/ambiguous.

    With ``return_alpha`` also return the (H, W, K) mixing weights of every
    palette colour against the background (1 = pure colour, 0 = background).

    Example:
        >>> img = np.full((4, 4, 3), 200, np.uint8); img[1:3, 1:3] = COLORS["red"]
        >>> int((classify_pixels(img) == 0).sum())
        4
    """
    img = np.asarray(image, dtype=np.float64)[..., :3]
    bg = estimate_background(img) if background is None else np.asarray(background, np.float64)
    d = _PALETTE - bg  # (K, 3) direction background -> palette colour
    v = img - bg  # (H, W, 3)
    alpha = np.einsum("hwc,kc->hwk", v, d) / np.maximum((d * d).sum(1), 1e-9)
    alpha_c = np.clip(alpha, 0.0, 1.25)
    resid = np.linalg.norm(v[:, :, None, :] - alpha_c[..., None] * d[None, None], axis=-1)
    k = resid.argmin(-1)
    a = np.take_along_axis(alpha, k[..., None], -1)[..., 0]
    r = np.take_along_axis(resid, k[..., None], -1)[..., 0]
    classes = np.where((a >= min_alpha) & (r <= max_residual), k, -1)
    return (classes, alpha) if return_alpha else classes


def _fill_holes(mask: np.ndarray, fillable: np.ndarray) -> np.ndarray:
    inv, n = connected_components(np.where(mask, -1, 0))
    if n <= 1:
        return mask
    border = np.unique(np.concatenate([inv[0], inv[-1], inv[:, 0], inv[:, -1]]))
    holes = (inv > 0) & ~np.isin(inv, border) & fillable
    return mask | holes


_BLURS = (0.0, 0.6, 1.0, 1.5, 2.0)  # candidate Gaussian blur of the image, in pixels


@lru_cache(maxsize=None)
def _unit_moments(shape: str) -> tuple[float, float, float, float]:
    """Centroid offset and variances (x, y) of the unit-radius shape."""
    R, n = 64, 200
    cov = render_mask(shape, n / 2, n / 2, R, n, n).astype(np.float64)
    ys, xs = np.mgrid[0:n, 0:n]
    a = cov.sum()
    mx, my = (xs * cov).sum() / a, (ys * cov).sum() / a
    vx, vy = ((xs - mx) ** 2 * cov).sum() / a, ((ys - my) ** 2 * cov).sum() / a
    return (mx - n / 2) / R, (my - n / 2) / R, vx / R**2, vy / R**2


def _render(shape: str, cx: float, cy: float, sx: float, sy: float, h: int, w: int,
            sigma: float = 0.0) -> np.ndarray:
    """Coverage of the unit shape scaled by (sx, sy) at (cx, cy), blurred by ``sigma`` px."""
    cov = render_coverage(shape, cx, cy, sx, sy, h, w)
    if sigma > 0:
        cov = _gauss_matrix(h, sigma) @ cov @ _gauss_matrix(w, sigma).T
    return cov


@lru_cache(maxsize=512)
def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix applying a 1-D Gaussian blur (zero padding) along one axis."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    return np.exp(-0.5 * (d / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


def classify_shape(weights: np.ndarray) -> tuple[str, float]:
    """Best shape for a mask or soft coverage map -> (shape, score in [0, 1]).

    Analysis by synthesis: for every shape and candidate blur, the template is
    placed and scaled to match the map's centroid and second moments, blurred,
    and compared by soft IoU (sum of minima / sum of maxima); the best wins.

    Example:
        >>> from attnscope.datasets.shapes import render_mask
        >>> classify_shape(render_mask("star", 16, 16, 10, 32, 32))[0]
        'star'
    """
    a = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
    total = a.sum()
    if total <= 0:
        return SHAPES[0], 0.0
    h, w = a.shape
    ys, xs = np.mgrid[0:h, 0:w]
    mx, my = (xs * a).sum() / total, (ys * a).sum() / total
    vx, vy = ((xs - mx) ** 2 * a).sum() / total, ((ys - my) ** 2 * a).sum() / total
    best, best_score = SHAPES[0], -1.0
    for shape in SHAPES:
        ux, uy, uvx, uvy = _unit_moments(shape)
        for sigma in _BLURS:
            if vx - sigma**2 <= 0.25 or vy - sigma**2 <= 0.25:
                continue
            sx, sy = np.sqrt((vx - sigma**2) / uvx), np.sqrt((vy - sigma**2) / uvy)
            t = _render(shape, mx - ux * sx, my - uy * sy, sx, sy, h, w, sigma)
            score = np.minimum(t, a).sum() / max(np.maximum(t, a).sum(), 1e-9)
            if score > best_score:
                best, best_score = shape, float(score)
    return best, best_score


def detect(image: np.ndarray, min_area: int | None = None, background: np.ndarray | None = None,
           max_residual: float = 70.0) -> list[Detection]:
    """Detect coloured shapes in an RGB uint8 image, largest first.

    ``min_area`` defaults to ``max(4, 0.003 * H * W)`` pixels.

    Example:
        >>> from attnscope.datasets.shapes import make_scene
        >>> s = make_scene(0, n_objects=1)
        >>> [(d.color, d.shape) for d in detect(s.image)] == [(s.objects[0].color, s.objects[0].shape)]
        True
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    h, w = img.shape[:2]
    min_area = max(4, int(round(0.003 * h * w))) if min_area is None else int(min_area)
    classes, alpha = classify_pixels(img, background, max_residual=max_residual, return_alpha=True)
    labels, n = connected_components(classes)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    bg = classes < 0
    margin = max(2, int(round(0.06 * max(h, w))))
    out: list[Detection] = []
    for lab in np.nonzero(areas >= min_area)[0]:
        if lab == 0:
            continue
        mask = _fill_holes(labels == lab, bg)
        ys, xs = np.nonzero(mask)
        k = int(classes[ys[0], xs[0]])
        color = _NAMES[k]
        # Soft coverage: this colour's mixing weight on the component and on the
        # nearby background (blur tails), zero on other components.
        y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)
        x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)
        soft = np.clip(alpha[y0:y1, x0:x1, k], 0.0, 1.0)
        keep = mask[y0:y1, x0:x1] | (bg[y0:y1, x0:x1] & (soft >= 0.1))
        shape, score = classify_shape(np.where(keep, soft, 0.0))
        out.append(Detection(color, shape, mask, int(mask.sum()),
                             (float(xs.mean()), float(ys.mean())), score))
    out.sort(key=lambda d: -d.area)
    return out


def match_objects(detections: list[Detection], objects) -> list[int | None]:
    """For each object (ShapeObject or Scene.objects) the index of a distinct detection
    with the same colour and shape (largest first), or None.

    Example:
        >>> match_objects([], [])
        []
    """
    objects = getattr(objects, "objects", objects)
    used: set[int] = set()
    out: list[int | None] = []
    for o in objects:
        hit = next((i for i, d in enumerate(detections)
                    if i not in used and d.color == o.color and d.shape == o.shape), None)
        if hit is not None:
            used.add(hit)
        out.append(hit)
    return out


def matches_caption(detections: list[Detection], scene_objects) -> bool:
    """True when every captioned object is detected with the right colour and shape.

    Extra detections are allowed. Example: ``matches_caption(detect(img), scene.objects)``.
    """
    return all(m is not None for m in match_objects(detections, scene_objects))


def masks_for_words(detections: list[Detection], scene) -> dict[int, np.ndarray]:
    """Ground-truth masks for the caption words of a *generated* image.

    ``scene`` is the prompt's Scene (or anything with ``words``, ``word_kinds``,
    ``word_objects``, ``objects``). A colour word gets the detection of that
    colour, a shape word the detection of that shape; when several qualify the
    one that also matches the object's other attribute is used; a size word
    gets the detection matching both colour and shape. Ambiguous or missing ->
    the word is absent from the result. Position words never get masks.

    Example:
        >>> from attnscope.datasets.shapes import make_scene
        >>> s = make_scene(2)
        >>> sorted(masks_for_words(detect(s.image), s)) == sorted(s.word_masks)
        True
    """
    out: dict[int, np.ndarray] = {}
    for i, kind in scene.word_kinds.items():
        obj = scene.objects[scene.word_objects[i]] if i in scene.word_objects else None
        word = scene.words[i]
        if kind == "color":
            cands = [d for d in detections if d.color == word]
            if len(cands) > 1 and obj is not None:
                cands = [d for d in cands if d.shape == obj.shape]
        elif kind == "shape":
            cands = [d for d in detections if d.shape == word]
            if len(cands) > 1 and obj is not None:
                cands = [d for d in cands if d.color == obj.color]
        elif kind == "size" and obj is not None:
            cands = [d for d in detections if d.color == obj.color and d.shape == obj.shape]
        else:
            continue
        if len(cands) == 1:
            out[i] = cands[0].mask
    return out


def degrade(image: np.ndarray, noise_std: float = 0.0, blur_sigma: float = 0.0,
            rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Gaussian blur (PIL) then additive Gaussian noise; returns uint8.

    Example:
        >>> degrade(np.zeros((8, 8, 3), np.uint8), noise_std=5).dtype
        dtype('uint8')
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = np.asarray(image, dtype=np.uint8)
    if blur_sigma > 0:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur_sigma)))
    out = out.astype(np.float64)
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def detector_accuracy(n: int = 200, size: int = 64, noise_std: float = 0.0, blur_sigma: float = 0.0,
                      seed: int = 0, split: str = "test") -> dict[str, float]:
    """Object recall (colour+shape, colour only) and scene-level caption match rate.

    Example:
        >>> detector_accuracy(n=3, size=32)["object_recall"] >= 0.0
        True
    """
    hit = color_hit = total = scene_ok = 0
    rng = np.random.default_rng(seed + 12345)
    for s in make_scenes(seed, n, split=split, size=size):
        dets = detect(degrade(s.image, noise_std, blur_sigma, rng))
        m = match_objects(dets, s.objects)
        hit += sum(x is not None for x in m)
        colors = {d.color for d in dets}
        color_hit += sum(o.color in colors for o in s.objects)
        total += len(s.objects)
        scene_ok += all(x is not None for x in m)
    return {"object_recall": hit / total, "color_recall": color_hit / total, "scene_match": scene_ok / n}


if __name__ == "__main__":  # python -m attnscope.datasets.detect
    conditions = [("clean", {}), ("noise σ=10", {"noise_std": 10.0}), ("blur σ=1", {"blur_sigma": 1.0}),
                  ("blur σ=2", {"blur_sigma": 2.0}), ("blur σ=1 + noise σ=10", {"blur_sigma": 1.0, "noise_std": 10.0})]
    for size in (64, 32):
        for name, kw in conditions:
            r = detector_accuracy(n=200, size=size, **kw)
            print(f"{size}px {name:<22} " + "  ".join(f"{k}={v:.3f}" for k, v in r.items()))
