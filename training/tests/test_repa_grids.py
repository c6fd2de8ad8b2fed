"""REPA towards UNet features on a grid finer than the tokens (``--repa-grid``)."""

import pytest
import torch

torch.set_num_threads(1)


def test_per_token_groups_every_fine_cell_under_the_token_that_covers_it():
    from training.repa import per_token

    grid, token_grid, channels = 16, 8, 3
    features = torch.randn(2, grid * grid, channels)
    grouped = per_token(features, token_grid)
    assert grouped.shape == (2, token_grid * token_grid, 4, channels)
    fine = features.reshape(2, grid, grid, channels)
    for row, col in [(0, 0), (3, 5), (7, 7)]:
        under = fine[:, 2 * row:2 * row + 2, 2 * col:2 * col + 2].reshape(2, 4, channels)
        assert torch.equal(grouped[:, row * token_grid + col], under)
    assert per_token(features, grid) is features  # at the token grid: one cell per token, unchanged
    with pytest.raises(ValueError, match="--repa-grid"):
        per_token(features, 5)


def test_alignment_loss_is_zero_for_a_head_that_predicts_every_cell_exactly():
    from training.repa import alignment_loss

    target = torch.randn(2, 64, 4, 6)
    hidden = torch.randn(2, 64, 12)
    exact = lambda h: target.reshape(2, 64, 24)  # noqa: E731
    assert alignment_loss(hidden, target, exact).abs() < 1e-6
    flipped = lambda h: -target.reshape(2, 64, 24)  # noqa: E731
    assert torch.isclose(alignment_loss(hidden, target, flipped), torch.tensor(2.0))


def test_training_aligns_with_a_finer_grid_and_refuses_grids_that_do_not_fit(tmp_path):
    from safetensors.torch import load_file

    from attnscope.pipelines import WEIGHTS
    from training.train_mmdit import build_pipeline, main as mmdit_main

    vae, out = WEIGHTS / "shapes-unet", tmp_path / "fine"
    flags = ["--vae", str(vae), "--out", str(out), "--bank", "8", "--batch", "2", "--threads", "1", "--every", "1000",
             "--heads", "2", "--blocks", "2", "--repa-block", "1"]
    mmdit_main(flags + ["--steps", "1", "--repa-grid", "8", "--repa-grid", "16"])
    assert load_file(str(out / "repa.safetensors"))["features"].shape == (8, 8 * 8, 96)
    assert load_file(str(out / "repa-16.safetensors"))["features"].shape == (8, 16 * 16, 48)  # the 16×16 block
    saved = load_file(str(out / "checkpoint.safetensors"))
    assert saved["repa_projector_16/4.weight"].shape[0] == 4 * 48  # every cell under a token at once
    pipe, _ = build_pipeline(vae, out)  # the projectors are dropped: a stock SD3 transformer
    assert not any("repa" in name for name in pipe.transformer.state_dict())
    with pytest.raises(SystemExit, match="multiple"):
        mmdit_main(flags + ["--out", str(tmp_path / "odd"), "--steps", "1", "--repa-grid", "12"])
    with pytest.raises(SystemExit, match="no up-path attention block at 32"):
        mmdit_main(flags + ["--out", str(tmp_path / "fine32"), "--bank-from", str(out), "--steps", "1", "--repa-grid", "32"])
    for bad in (["--repa-grid", "16", "--repa", "0"], ["--repa-grid", "16", "--repa-grid", "16"]):
        with pytest.raises(SystemExit):
            mmdit_main(flags + ["--steps", "1"] + bad)
    assert not (tmp_path / "odd" / "bank.safetensors").exists()  # refused before the bank is drawn
