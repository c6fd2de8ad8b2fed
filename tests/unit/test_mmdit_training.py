"""The MM-DiT training shortcut is exact: one zero token with a log(256) logit bias equals SD3's 256 zero tokens."""

import pytest
import torch

from attnscope.models import architectures as arch
from attnscope.models.train_mmdit import ZeroTokenBias


def test_one_biased_zero_token_equals_many():
    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer().eval()
    latents = torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
    context = torch.randn(2, 5, 2 * arch.SD3_CLIP_WIDTH)
    pooled = torch.randn(2, 2 * arch.SD3_CLIP_WIDTH)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        many = torch.cat([context, torch.zeros(2, arch.SD3_ZERO_TOKENS, context.shape[-1])], dim=1)
        stock = transformer(latents, encoder_hidden_states=many, pooled_projections=pooled, timestep=t).sample
        one = torch.cat([context, torch.zeros(2, 1, context.shape[-1])], dim=1)
        with ZeroTokenBias(arch.SD3_ZERO_TOKENS):
            short = transformer(latents, encoder_hidden_states=one, pooled_projections=pooled, timestep=t).sample
    torch.testing.assert_close(short, stock, atol=1e-4, rtol=1e-4)


def test_training_smoke_and_stock_pipeline(tmp_path):
    """Two steps train, resume-free, and the result loads as a stock StableDiffusion3Pipeline folder."""
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

    from attnscope.models.train import main as train_main
    from attnscope.models.train_mmdit import build_pipeline, main as mmdit_main

    common = ["--batch", "2", "--threads", "1", "--every", "1000"]
    train_main(["vae", "--out", str(tmp_path / "vae"), "--steps", "1"] + common)
    mmdit_main(["--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "mmdit"), "--steps", "2", "--bank", "8"] + common)
    pipe, state = build_pipeline(tmp_path / "vae", tmp_path / "mmdit")
    assert state["step"] == 2
    pipe.save_pretrained(tmp_path / "folder")
    again = DiffusionPipeline.from_pretrained(tmp_path / "folder", text_encoder_3=None, tokenizer_3=None)  # no T5, as for SD3 without T5
    assert isinstance(again, StableDiffusion3Pipeline)
    from attnscope.cli import CLIError, absent_components, load_pipeline

    assert absent_components(tmp_path / "folder")["text_encoder_3"] is None
    assert isinstance(load_pipeline(str(tmp_path / "folder"), "cpu", "float32", need_adapter=False), StableDiffusion3Pipeline)
    with pytest.raises(CLIError):  # attnscope cannot trace SD3 yet: refused before any work
        load_pipeline(str(tmp_path / "folder"), "cpu", "float32")
    again.set_progress_bar_config(disable=True)
    image = again("a red circle", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
