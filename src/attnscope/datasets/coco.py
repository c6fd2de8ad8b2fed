"""Export scenes to a COCO-style folder and read such folders back.

Layout written by :func:`export_coco`::

    out_dir/images/000000.png ...
    out_dir/annotations.json

``annotations.json`` holds ``images`` (each with ``captions`` -- a list of
strings -- and ``words`` -- ``[{"text", "kind", "annotation_id"}]`` for the
first caption, ``kind``/``annotation_id`` null for plain words -- plus
``relations``), ``categories`` (one per shape noun) and ``annotations`` (one
per object: ``segmentation`` as uncompressed COCO RLE of the visible mask in
column-major order, ``bbox`` [x, y, w, h], ``area``, ``attributes``
{color, size, center, radius}).

Example:
    >>> import tempfile, os
    >>> from attnscope.datasets.shapes import make_scenes
    >>> d = os.path.join(tempfile.mkdtemp(), "ds")
    >>> _ = export_coco(make_scenes(0, 2, size=32), d)
    >>> len(load_coco(d))
    2
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..files import staged_folder
from .shapes import COLORS, SHAPES, Scene, ShapeObject


def rle_encode(mask: np.ndarray, compressed: bool = False) -> dict:
    """COCO RLE of a boolean (H, W) mask (column-major runs, starting with zeros).

    Example:
        >>> rle_encode(np.array([[0, 1], [1, 1]], bool))
        {'counts': [1, 3], 'size': [2, 2]}
    """
    m = np.asarray(mask, dtype=bool)
    flat = m.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    out = {"counts": counts, "size": [int(m.shape[0]), int(m.shape[1])]}
    if compressed:
        out["counts"] = _counts_to_string(counts)
    return out


def rle_decode(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask from COCO RLE (``counts`` a list or the compressed string).

    Example:
        >>> rle_decode({"counts": [1, 3], "size": [2, 2]}).tolist()
        [[False, True], [True, True]]
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def _counts_to_string(counts: list[int]) -> str:
    out = []
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr(c + (0x20 if more else 0) + 48))
    return "".join(out)


def _counts_from_string(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (union) with PIL.

    Example:
        >>> int(polygons_to_mask([[1, 1, 3, 1, 3, 3, 1, 3]], 5, 5).sum())
        9
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)]
        if len(pts) >= 3:
            draw.polygon(pts, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def export_coco(scenes, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``scenes`` to ``out_dir`` atomically (temp dir + rename); return the path.

    Example:
        >>> from attnscope.datasets.shapes import make_scenes
        >>> import tempfile
        >>> export_coco(make_scenes(0, 1), tempfile.mkdtemp() + "/coco").name
        'coco'
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    with staged_folder(out) as tmp:
        (tmp / "images").mkdir()
        cat_ids = {s: i + 1 for i, s in enumerate(SHAPES)}
        images, annotations = [], []
        for img_id, sc in enumerate(scenes):
            h, w = sc.image.shape[:2]
            name = f"{img_id:06d}.png"
            Image.fromarray(np.asarray(sc.image, dtype=np.uint8)).save(tmp / "images" / name)
            ann_ids = []
            for k, obj in enumerate(sc.objects):
                if obj.shape not in cat_ids:
                    cat_ids[obj.shape] = len(cat_ids) + 1
                ann_ids.append(len(annotations) + 1)
                annotations.append({
                    "id": ann_ids[-1], "image_id": img_id, "category_id": cat_ids[obj.shape],
                    "segmentation": rle_encode(sc.masks[k]), "area": int(sc.masks[k].sum()),
                    "bbox": _bbox(sc.masks[k]), "iscrowd": 0,
                    "attributes": {"color": obj.color, "size": obj.size,
                                   "center": [float(c) for c in obj.center], "radius": float(obj.radius)},
                })
            words = [{"text": wd, "kind": sc.word_kinds.get(i),
                      "annotation_id": ann_ids[sc.word_objects[i]] if i in sc.word_objects else None}
                     for i, wd in enumerate(sc.words)]
            images.append({"id": img_id, "file_name": name, "height": h, "width": w,
                           "captions": [sc.caption], "words": words,
                           "relations": [[a, r, b] for a, r, b in sc.relations],
                           "meta": {k: v for k, v in sc.meta.items() if isinstance(v, (str, int, float))}})
        categories = [{"id": i, "name": s, "supercategory": "shape"} for s, i in cat_ids.items()]
        doc = {"info": {"description": "ShapesWorld (attnscope)", "version": "1"},
               "images": images, "categories": categories, "annotations": annotations}
        with open(tmp / "annotations.json", "w") as f:
            json.dump(doc, f)
    return out


def _decode_segmentation(seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, dict):
        return rle_decode(seg)
    if isinstance(seg, list):
        return polygons_to_mask(seg, h, w)
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


def load_coco(directory: str | os.PathLike) -> list[Scene]:
    """Read a COCO-style folder (ours or any with RLE / polygon masks) into Scenes.

    Without a stored ``words`` list, words are ``caption.split()`` and shape /
    colour words are linked to the unique annotation with that category /
    ``attributes.color`` when there is exactly one.

    Example: ``scenes = load_coco("data/shapes_test")``.
    """
    root = Path(directory)
    path = root / "annotations.json"
    try:
        with open(path) as f:
            doc = json.load(f)
        images, anns = doc["images"], doc.get("annotations", [])
        cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
    except FileNotFoundError:
        raise ValueError(f"{path}: annotations file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a COCO annotations file (missing {e})") from None
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    scenes = []
    for info in images:
        file = root / "images" / info["file_name"]
        if not file.exists():
            file = root / info["file_name"]
        image = np.asarray(Image.open(file).convert("RGB"))
        h, w = image.shape[:2]
        img_anns = sorted(by_image.get(info["id"], []), key=lambda a: a["id"])
        masks = np.zeros((len(img_anns), h, w), dtype=bool)
        objects = []
        for k, a in enumerate(img_anns):
            masks[k] = _decode_segmentation(a["segmentation"], h, w)
            attrs = a.get("attributes") or {}
            bx, by, bw, bh = a.get("bbox") or _bbox(masks[k])
            center = tuple(attrs.get("center") or (bx + bw / 2, by + bh / 2))
            objects.append(ShapeObject(cats.get(a["category_id"], str(a["category_id"])), attrs.get("color"),
                                       attrs.get("size"), (float(center[0]), float(center[1])),
                                       float(attrs.get("radius") or max(bw, bh) / 2)))
        captions = info.get("captions") or []
        caption = captions[0] if captions else ""
        index = {a["id"]: k for k, a in enumerate(img_anns)}
        words, kinds, word_objects = [], {}, {}
        if info.get("words"):
            for i, wd in enumerate(info["words"]):
                words.append(wd["text"])
                if wd.get("kind"):
                    kinds[i] = wd["kind"]
                if wd.get("annotation_id") in index:
                    word_objects[i] = index[wd["annotation_id"]]
        else:
            words = caption.split()
            for i, wd in enumerate(words):
                field_of = "shape" if wd in SHAPES else "color" if wd in COLORS else None
                if field_of is None:
                    continue
                kinds[i] = field_of
                hits = [k for k, o in enumerate(objects) if getattr(o, field_of) == wd]
                if len(hits) == 1:
                    word_objects[i] = hits[0]
        word_masks = {i: masks[k] for i, k in word_objects.items() if kinds.get(i) != "position"}
        scenes.append(Scene(image=image, caption=caption, objects=objects, masks=masks, words=words,
                            word_masks=word_masks, word_kinds=kinds, word_objects=word_objects,
                            relations=[tuple(r) for r in info.get("relations", [])],
                            meta={**info.get("meta", {}), "image_id": info["id"],
                                  "file_name": info["file_name"]}))
    return scenes
