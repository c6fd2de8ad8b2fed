import json

import numpy as np
import pytest

from attnscope.datasets.coco import (export_coco, load_coco, polygons_to_mask, rle_decode, rle_encode)
from attnscope.datasets.shapes import make_scenes


def test_rle_roundtrip_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (32, 17), (64, 64)]:
        for p in (0.0, 0.1, 0.5, 1.0):
            m = rng.random(shape) < p
            for compressed in (False, True):
                rle = rle_encode(m, compressed=compressed)
                assert rle["size"] == list(shape)
                assert np.array_equal(rle_decode(rle), m)
    r = rle_encode(np.array([[0, 1], [1, 1]], bool))
    assert r["counts"] == [1, 3]  # column-major, starts with a zero-run
    assert rle_encode(np.array([[1, 0], [1, 0]], bool))["counts"] == [0, 2, 2]


def test_rle_rejects_bad_counts():
    with pytest.raises(ValueError):
        rle_decode({"counts": [1, 2], "size": [2, 2]})


def test_polygon_rasterisation():
    m = polygons_to_mask([[1, 1, 4, 1, 4, 4, 1, 4]], 6, 6)
    assert m[1:5, 1:5].all() and m.sum() == 16


def test_export_load_roundtrip(tmp_path):
    scenes = make_scenes(0, 12, size=48)
    out = export_coco(scenes, tmp_path / "ds")
    assert (out / "images" / "000000.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    doc = json.loads((out / "annotations.json").read_text())
    assert {"images", "categories", "annotations"} <= set(doc)
    assert doc["annotations"][0]["segmentation"]["size"] == [48, 48]
    loaded = load_coco(out)
    assert len(loaded) == len(scenes)
    for a, b in zip(scenes, loaded):
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.masks, b.masks)
        assert a.caption == b.caption and a.words == b.words
        assert a.word_kinds == b.word_kinds and a.word_objects == b.word_objects
        assert sorted(a.word_masks) == sorted(b.word_masks)
        assert all(np.array_equal(a.word_masks[i], b.word_masks[i]) for i in a.word_masks)
        assert [(o.shape, o.color, o.size) for o in a.objects] == [(o.shape, o.color, o.size) for o in b.objects]
        assert a.relations == b.relations
    with pytest.raises(FileExistsError):
        export_coco(scenes[:1], out)
    export_coco(scenes[:2], out, overwrite=True)
    assert len(load_coco(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_load_foreign_polygon_dataset(tmp_path):
    from PIL import Image
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    doc = {"images": [{"id": 3, "file_name": "a.png", "captions": ["a red square"]}],
           "categories": [{"id": 1, "name": "square"}],
           "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "attributes": {"color": "red"},
                            "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "bbox": [2, 2, 5, 5]}]}
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    (s,) = load_coco(tmp_path)
    assert s.words == ["a", "red", "square"] and s.word_kinds == {1: "color", 2: "shape"}
    assert s.masks[0].sum() == 25 and np.array_equal(s.word_masks[1], s.masks[0])


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_coco(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_coco(tmp_path)
    (tmp_path / "annotations.json").write_text("{}")
    with pytest.raises(ValueError, match="COCO"):
        load_coco(tmp_path)
