import numpy as np

from attnscope.datasets.detect import (classify_shape, connected_components, degrade, detect,
                                       detector_accuracy, masks_for_words, match_objects, matches_caption)
from attnscope.datasets.shapes import SHAPES, make_scene, make_scenes, render_mask


def test_connected_components_matches_flood_fill():
    rng = np.random.default_rng(0)
    classes = rng.integers(-1, 2, size=(20, 25))
    labels, n = connected_components(classes)
    assert labels.max() == n and (labels[classes == -1] == 0).all()
    # reference: naive BFS
    seen = np.zeros_like(classes, bool)
    count = 0
    for y in range(20):
        for x in range(25):
            if classes[y, x] < 0 or seen[y, x]:
                continue
            count += 1
            stack, comp = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                comp.append((cy, cx))
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < 20 and 0 <= nx < 25 and not seen[ny, nx] and classes[ny, nx] == classes[cy, cx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            labs = {labels[p] for p in comp}
            assert len(labs) == 1 and (labels == labs.pop()).sum() == len(comp)
    assert count == n


def test_classify_shape_templates():
    for shape in SHAPES:
        for r in (5, 12):
            m = render_mask(shape, 20.3, 19.6, r, 40, 40)
            assert classify_shape(m)[0] == shape


def test_detector_recall_on_clean_scenes():
    hits = total = 0
    for s in make_scenes(0, 200, split="test"):
        m = match_objects(detect(s.image), s.objects)
        hits += sum(x is not None for x in m)
        total += len(m)
    assert hits / total >= 0.95


def test_detector_masks_on_clean_scene_are_exact():
    for s in make_scenes(5, 10, background="plain"):
        dets = detect(s.image)
        for k, j in enumerate(match_objects(dets, s.objects)):
            assert j is not None
            assert np.array_equal(dets[j].mask, s.masks[k])


def test_detector_degraded_floor():
    r = detector_accuracy(n=40, size=64, noise_std=8.0, blur_sigma=1.0, seed=1)
    assert r["object_recall"] >= 0.85 and r["color_recall"] >= 0.95


def test_matches_caption_and_word_masks():
    s = make_scene(11, n_objects=2, background="plain")
    dets = detect(s.image)
    assert matches_caption(dets, s.objects) and matches_caption(dets, s)
    wm = masks_for_words(dets, s)
    assert sorted(wm) == sorted(s.word_masks)
    for i, m in wm.items():
        assert np.array_equal(m, s.word_masks[i])
    # drop one object: its words lose their masks and the caption no longer matches
    missing = [d for d in dets if d.color != s.objects[0].color]
    assert not matches_caption(missing, s.objects)
    wm2 = masks_for_words(missing, s)
    assert all(s.word_objects[i] != 0 or s.word_kinds[i] == "shape" for i in wm2)


def test_detect_on_blank_and_noise():
    assert detect(np.full((32, 32, 3), 128, np.uint8)) == []
    noisy = degrade(np.full((64, 64, 3), 200, np.uint8), noise_std=10, rng=0)
    assert detect(noisy) == []
