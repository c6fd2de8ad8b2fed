"""Training state: checkpoints round-trip without pickle, and a resumed run equals an uninterrupted one."""

import torch

from training.checkpoint import EMA, load_checkpoint, save_checkpoint
from training.train import main as train_main


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
    train_main(["vae", "--out", str(tmp_path / "vae"), "--steps", "1"] + common)
    unet = ["unet", "--vae", str(tmp_path / "vae")] + common
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


def test_extra_ema_round_trips_loads_by_decay_and_starts_from_the_main_ema_on_resume(tmp_path):
    import pytest

    from training.checkpoint import ema_name

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    main, slow = EMA(net, 0.5), EMA(net, 0.99)
    with torch.no_grad():
        net.weight.add_(1.0)
    main.update(net, 10_000)
    slow.update(net, 10_000)
    save_checkpoint(tmp_path / "one", {"net": net}, None, {"step": 1}, {"net": main})
    with pytest.raises(ValueError, match="--extra-ema"):
        load_checkpoint(tmp_path / "one", {"net": torch.nn.Linear(3, 2)}, use_ema=0.99)
    other = torch.nn.Linear(3, 2)
    emas = {"net": EMA(other, 0.5), ema_name("net", 0.99): EMA(other, 0.99)}  # the second is added on resume
    load_checkpoint(tmp_path / "one", {"net": other}, emas=emas)
    assert all(torch.equal(emas[ema_name("net", 0.99)].shadow[k], v) for k, v in main.shadow.items())  # from the main EMA
    reloaded = {k: v.clone() for k, v in emas["net"].shadow.items()}
    with torch.no_grad():
        other.weight.add_(1.0)
    emas[ema_name("net", 0.99)].update(other, 10_000)
    assert all(torch.equal(emas["net"].shadow[k], v) for k, v in reloaded.items())  # they share no tensor

    save_checkpoint(tmp_path / "two", {"net": net}, None, {"step": 1}, {"net": main, ema_name("net", 0.99): slow})
    for use_ema, expected in [(False, net.state_dict()), (True, main.shadow), (0.99, slow.shadow)]:
        loaded = torch.nn.Linear(3, 2)
        load_checkpoint(tmp_path / "two", {"net": loaded}, use_ema=use_ema)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items()), use_ema
    assert not torch.equal(main.shadow["weight"], slow.shadow["weight"])  # the three differ, so the loop can fail
