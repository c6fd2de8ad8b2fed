"""Training state: checkpoints round-trip without pickle, and a resumed run equals an uninterrupted one."""

import pytest
import torch

from attnscope.pipelines import WEIGHTS
from training.checkpoint import EMA, load_checkpoint, save_checkpoint
from training.errors import TrainingError
from training.train import main as train_main
from training.train import parse_args


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    ema = EMA(net, 0.9)
    ema.update(net, 1)
    save_checkpoint(tmp_path, {"net": net}, opt, {"step": 1}, {"net": ema})
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    ema2 = EMA(other, 0.9)
    meta = load_checkpoint(tmp_path, {"net": other}, opt2, {"net": ema2})
    assert meta["step"] == 1
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    for k in ema.shadow:
        assert torch.equal(ema.shadow[k], ema2.shadow[k])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pt"))


def test_resumed_training_equals_uninterrupted(tmp_path):
    common = ["--batch", "2", "--threads", "1", "--every", "1000", "--bank", "8"]
    unet = ["unet", "--vae", str(WEIGHTS / "shapes-unet")] + common  # an exported folder's VAE
    train_main(unet + ["--out", str(tmp_path / "a"), "--steps", "2"])
    train_main(unet + ["--out", str(tmp_path / "a"), "--steps", "3"])  # resumes at step 2
    train_main(unet + ["--out", str(tmp_path / "b"), "--steps", "3"])
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_ema_update_is_the_exponential_average_for_every_tensor():
    """The fused update equals ``shadow ← decay · shadow + (1 − decay) · value`` tensor by tensor; integer buffers are copied."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(module, decay=0.9)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    module.train()(torch.randn(5, 4))  # moves the running stats and num_batches_tracked
    ema.update(module, step=10_000)
    for key, value in module.state_dict().items():
        expected = 0.9 * before[key] + 0.1 * value.float() if value.dtype.is_floating_point else value
        torch.testing.assert_close(ema.shadow[key], expected.to(ema.shadow[key].dtype))


def test_defaults_are_the_shipped_recipe_and_usage_errors_raise():
    vae, unet = parse_args(["vae", "--out", "v"]), parse_args(["unet", "--vae", "v", "--out", "u"])
    assert (vae.steps, vae.batch, vae.lr, vae.minutes) == (1562, 16, 1e-3, None)
    assert (unet.steps, unet.batch, unet.lr, unet.ema) == (7453, 32, 6e-4, 0.999)
    with pytest.raises(TrainingError, match="--vae"):
        parse_args(["unet", "--out", "u"])


def test_main_reports_a_missing_vae_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["unet", "--vae", str(tmp_path / "none"), "--out", str(tmp_path / "u"), "--threads", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No VAE in") and "\n" not in err
