"""The token-identity stage (issue #27): its loss, a smoke run, and that --identity 0 is the shipped UNet stage."""

import json

import torch

from attnscope.pipelines import WEIGHTS
from training import architectures as arch
from training.text_identity import identity_loss, strip_prefix
from training.text_identity import main as identity_main
from training.train import main as train_main

COMMON = ["--vae", str(WEIGHTS / "shapes-unet"), "--batch", "2", "--threads", "1", "--every", "1000", "--bank", "8"]


def test_identity_loss_reads_caption_positions_only():
    tokenizer = arch.shapes_tokenizer()
    ids = arch.token_ids(tokenizer, ["a red circle", ""])
    n, end = len(tokenizer), tokenizer.eos_token_id
    head = torch.nn.Linear(n, n, bias=False)
    torch.nn.init.eye_(head.weight)
    perfect = 50.0 * torch.nn.functional.one_hot(ids, n).float()   # hidden states that name their own token
    assert identity_loss(head, perfect, ids, end) < 1e-6
    spoiled = perfect.clone()
    spoiled[:, 5:] = 0                                               # padding after the first end token: not read
    assert identity_loss(head, spoiled, ids, end) < 1e-6
    spoiled[0, 2] = perfect[0, 0]                                    # "red" made a copy of the start token
    assert identity_loss(head, spoiled, ids, end) > 1.0


def test_strip_prefix():
    assert strip_prefix("a picture of a red star") == "a red star"
    assert strip_prefix("an image of an orange cross") == "an orange cross"
    assert strip_prefix("a red star and a blue circle") == "a red star and a blue circle"


def test_smoke_run_logs_the_identity_probe_and_exports_a_stock_folder(tmp_path):
    identity_main(COMMON + ["--out", str(tmp_path / "run"), "--steps", "2", "--probe-every", "1", "--identity", "0.1"])
    probes = json.loads((tmp_path / "run" / "identity.json").read_text())
    assert [p["step"] for p in probes] == [0, 1, 2]
    assert {"scale", "min_position", "min_word", "min_pair", "positions_1_3", "collapsed"} <= probes[-1].keys()
    assert probes[0]["collapsed"] is False                          # a fresh encoder keeps tokens apart
    from safetensors.torch import load_file

    assert any(k.startswith("identity_head/") for k in load_file(str(tmp_path / "run" / "checkpoint.safetensors")))
    from attnscope.analysis import collapsed
    from training.export import build_unet_pipeline

    pipe, _ = build_unet_pipeline(WEIGHTS / "shapes-unet", tmp_path / "run")   # the head is not part of the pipeline
    assert type(pipe).__name__ == "StableDiffusionPipeline" and collapsed(pipe) is False


def test_identity_weight_zero_is_the_shipped_unet_stage(tmp_path):
    identity_main(COMMON + ["--out", str(tmp_path / "id"), "--steps", "2", "--identity", "0"])
    train_main(["unet"] + COMMON + ["--out", str(tmp_path / "shipped"), "--steps", "2"])
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "id" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "shipped" / "checkpoint.safetensors"))
    weights = [k for k in b if k.split("/")[0] in ("unet", "text_encoder", "ema_unet", "ema_text_encoder")]
    assert len(weights) > 100
    for key in weights:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_probe_flags_run(tmp_path):
    """The experiments' switches: captions without openings, the UNet blind to padding."""
    identity_main(COMMON + ["--out", str(tmp_path / "p"), "--steps", "1", "--identity", "0", "--no-prefix",
                            "--mask-padding", "--probe-every", "1"])
    assert [p["step"] for p in json.loads((tmp_path / "p" / "identity.json").read_text())] == [0, 1]
