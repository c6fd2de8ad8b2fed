"""--object-weight: the object cells cover every object pixel, follow the bank's scenes, and weight 1 is the plain loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnscope.datasets.shapes import make_scene
from training.object_weight import object_cells, scene_cells, weighted_mse
from training.train import scene_batch


def test_unit_weights_give_the_plain_loss_and_weights_shift_it():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    torch.testing.assert_close(weighted_mse(pred, target, torch.ones(3, 1, 16, 16)), F.mse_loss(pred, target))
    weight = torch.zeros(3, 1, 16, 16)
    weight[:, :, :8] = 1.0  # only the top half counts
    torch.testing.assert_close(weighted_mse(pred, target, weight), F.mse_loss(pred[:, :, :8], target[:, :, :8]))


def test_cells_cover_every_object_pixel_and_leave_far_background_out():
    rng = np.random.default_rng(3)
    scenes = [make_scene(rng, size=64) for _ in range(6)]
    cells = scene_cells(scenes, 16)
    assert cells.shape == (6, 1, 16, 16) and set(cells.unique().tolist()) <= {0.0, 1.0}
    union = torch.from_numpy(np.stack([s.masks.any(0) for s in scenes]))
    covered = F.interpolate(cells, scale_factor=4, mode="nearest")[:, 0].bool()
    assert bool(covered[union].all())
    far = F.max_pool2d(union.float()[:, None], 11, stride=1, padding=5)[:, 0] == 0  # ≥ 5 px from any object
    assert not bool(covered[far].any())


def test_bank_cells_follow_the_bank_stream_and_refuse_another(tmp_path):
    seed, size, chunk = 2, 6, 4
    captions = scene_batch(seed + 1_000_000, 0, 4)[1] + scene_batch(seed + 1_000_000, 1, 2)[1]
    cells = object_cells(tmp_path, seed, size, 16, captions, chunk=chunk)
    rng = np.random.default_rng([seed + 1_000_000, 1])
    assert torch.equal(cells[4:], scene_cells([make_scene(rng, size=64) for _ in range(2)], 16))
    assert torch.equal(object_cells(tmp_path, seed, size, 16, captions, chunk=chunk), cells)  # read back from the cache
    with pytest.raises(SystemExit, match="not drawn from seed 5"):
        object_cells(tmp_path / "other", 5, size, 16, captions, chunk=chunk)


def test_a_weight_that_is_not_positive_is_refused():
    from training.train_mmdit import main

    for bad in ("0", "-1"):
        with pytest.raises(SystemExit):
            main(["--vae", "v", "--out", "o", "--object-weight", bad])
