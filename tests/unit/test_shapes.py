import numpy as np
import pytest

from attnscope.datasets.shapes import (COLORS, RELATIONS, SHAPES, SIZE_RANGES, make_scene, make_scenes,
                                       scene_stream, vocabulary)

SCENES = make_scenes(0, 120)


def test_determinism_by_seed():
    a, b = make_scene(7), make_scene(7)
    assert a.caption == b.caption
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    s1, s2 = make_scenes(3, 5), make_scenes(3, 5)
    assert [s.caption for s in s1] == [s.caption for s in s2]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(s1, s2))
    # scene i depends only on (seed, split, i): a longer stream extends a shorter one
    longer = list(scene_stream(3, 8))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(s1, longer))
    assert [s.caption for s in make_scenes(4, 5)] != [s.caption for s in s1]


def test_splits_use_disjoint_streams():
    train = make_scenes(0, 20, split="train")
    test = make_scenes(0, 20, split="test")
    assert not any(np.array_equal(a.image, b.image) for a in train for b in test)
    assert test[0].meta["split"] == "test"
    with pytest.raises(ValueError):
        make_scenes(0, 1, split="nope")


def test_vocabulary_constants():
    assert len(SHAPES) >= 5 and len(COLORS) >= 6
    pal = np.array(list(COLORS.values()), float)
    d = np.linalg.norm(pal[:, None] - pal[None], axis=-1)
    assert d[~np.eye(len(pal), dtype=bool)].min() > 60


def test_masks_disjoint_exact_and_colored():
    for s in make_scenes(1, 60, background="plain"):
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        assert s.masks.dtype == bool and s.masks.shape == (len(s.objects), 64, 64)
        assert (s.masks.sum(0) <= 1).all()  # disjoint
        for o, m in zip(s.objects, s.masks):
            assert m.any()
            assert (s.image[m] == COLORS[o.color]).all()
        # background pixels are never an object colour
        bg = s.image[~s.masks.any(0)]
        pal = np.array(list(COLORS.values()))
        assert not (bg[:, None, :] == pal[None]).all(-1).any()


def test_objects_inside_image_and_sizes_scale_free():
    for size in (32, 64, 96):
        for s in make_scenes(2, 30, size=size):
            for o, m in zip(s.objects, s.masks):
                lo, hi = SIZE_RANGES[o.size]
                assert lo * size - 1e-9 <= o.radius <= hi * size + 1e-9
                ys, xs = np.nonzero(m)
                assert ys.min() >= 1 and xs.min() >= 1 and ys.max() <= size - 2 and xs.max() <= size - 2


def test_word_masks_and_kinds():
    for s in SCENES:
        assert s.words == s.caption.split()
        for i, kind in s.word_kinds.items():
            assert kind in ("shape", "color", "size", "position")
            obj = s.objects[s.word_objects[i]]
            if kind == "shape":
                assert s.words[i] == obj.shape
            elif kind == "color":
                assert s.words[i] == obj.color
            elif kind == "size":
                assert s.words[i] == obj.size
            else:
                assert s.words[i] in RELATIONS and i not in s.word_masks
            if kind != "position":
                assert s.word_masks[i].any()
                assert np.array_equal(s.word_masks[i], s.masks[s.word_objects[i]])
        # every object is named by its colour and shape words
        for k in range(len(s.objects)):
            kinds = {s.word_kinds[i] for i, o in s.word_objects.items() if o == k}
            assert {"shape", "color"} <= kinds


def test_relations_are_true():
    seen = set()
    for s in SCENES:
        for a, rel, b in s.relations:
            (ax, ay), (bx, by) = s.objects[a].center, s.objects[b].center
            seen.add(rel)
            assert {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[rel]
            assert " ".join(RELATIONS[rel].split()) in s.caption
    assert seen == set(RELATIONS)


def test_vocabulary_covers_captions_and_variety():
    vocab = set(vocabulary())
    assert vocabulary() == sorted(vocab)
    words = {w for s in SCENES for w in s.words}
    assert words <= vocab
    assert {len(s.objects) for s in SCENES} == {1, 2, 3}
    assert len({s.caption for s in SCENES}) > 100
    assert {s.meta["background"] for s in SCENES} == {"plain", "textured"}
    assert any(k == "size" for s in SCENES for k in s.word_kinds.values())
    # articles agree with the next word
    for s in SCENES:
        for w, nxt in zip(s.words, s.words[1:]):
            if w in ("a", "an"):
                assert (w == "an") == (nxt[0] in "aeiou")


def test_arguments_validated():
    assert len(make_scene(0, n_objects=3).objects) == 3
    with pytest.raises(ValueError):
        make_scene(0, n_objects=4)
    with pytest.raises(ValueError):
        make_scene(0, background="stripes")
    s = make_scene(np.random.default_rng(0), unique_colors=False, n_objects=3)
    assert len({(o.color, o.shape) for o in s.objects}) == 3
