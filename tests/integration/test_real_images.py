"""Real images: one denoising pass per noise draw (attnscope.realimages) on SD3, Flux and SD, and
`attnscope explain`."""

import json

import numpy as np
import pytest
import torch

from attnscope.realimages import trace_images
from attnscope.testing import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

IMAGES = (np.random.default_rng(0).random((2, 32, 48, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sd3_pipe():
    return tiny_sd3_pipeline(t5=False)


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def sdxl_pipe():
    return tiny_sdxl_pipeline()


def test_flux_packing_is_the_pipelines(flux_pipe):
    from diffusers import FluxPipeline

    from attnscope.adapters import adapter_for

    latents = torch.randn(2, 4, 12, 8)
    tokens, ids = adapter_for(flux_pipe).pack_latents(latents)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 2, 4, 12, 8))
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(2, 6, 4, "cpu", latents.dtype))


@pytest.mark.parametrize("name", ["sd3_pipe", "flux_pipe", "sd_pipe", "sdxl_pipe"])
def test_draws_are_averaged_calls_of_one_generation(name, request):
    pipe = request.getfixturevalue(name)
    prompt = ["a cat and a giraffe", "a dog"]
    both = trace_images(pipe, IMAGES, prompt, noise=0.4, draws=2, seed=3, keep_steps=True)
    heat = both.daam()
    assert len(both.generations) == 1 and heat.meta["steps_read"] == [0, 1] and heat.meta["cfg"] is False
    assert torch.equal(heat.images, torch.from_numpy(IMAGES)) and heat.words(1) == ["a", "dog"]
    second = trace_images(pipe, IMAGES, prompt, noise=0.4, draws=1, seed=4).daam()  # the second draw alone
    for name_, maps in second.maps.items():
        torch.testing.assert_close(heat.per_step[name_][1], maps, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(heat.per_step[name_][0], heat.per_step[name_][1])


def test_sdxl_pass_is_conditioned_as_its_pipeline_conditions_the_unet(sdxl_pipe):
    """The one pass gets the prompt states, pooled text embedding and time ids the SDXL pipeline gives
    its UNet for an image of that size (no guidance, so no negative half)."""
    from attnscope.adapters import adapter_for

    seen = []
    handle = sdxl_pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        sdxl_pipe(["a cat and a giraffe", "a dog"], height=32, width=48, num_inference_steps=1, guidance_scale=1.0,
                  output_type="latent")
    finally:
        handle.remove()
    adapter = adapter_for(sdxl_pipe)
    factor = sdxl_pipe.vae_scale_factor
    ours = adapter.unet_kwargs(adapter.condition(["a cat and a giraffe", "a dog"]), (32 // factor, 48 // factor))
    torch.testing.assert_close(ours["encoder_hidden_states"], seen[0]["encoder_hidden_states"])
    for key in ("text_embeds", "time_ids"):
        torch.testing.assert_close(ours["added_cond_kwargs"][key], seen[0]["added_cond_kwargs"][key])


def test_concepts_on_real_images_stop_after_the_last_joint_block(flux_pipe):
    calls = []
    last_single = flux_pipe.transformer.single_transformer_blocks[-1]
    handle = last_single.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        tc = trace_images(flux_pipe, IMAGES[:1], concepts=["cat", "giraffe"], layers=[], draws=2)
        full = trace_images(flux_pipe, IMAGES[:1], concepts=["cat", "giraffe"], layers=[], draws=2, stop_early=False)
    finally:
        handle.remove()
    assert len(calls) == 2  # only the run without early stopping reached the single-stream blocks
    ca = tc.concept_attention()
    assert ca.saliency.shape == (1, 2, 8, 12) and ca.meta["steps_read"] == [0, 1]
    torch.testing.assert_close(ca.saliency, full.concept_attention().saliency)


def test_bad_real_image_input(sd3_pipe):
    for noise in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            trace_images(sd3_pipe, IMAGES, noise=noise)
    with pytest.raises(ValueError, match="multiples of 4"):
        trace_images(sd3_pipe, IMAGES[:, :30])
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        trace_images(sd3_pipe, IMAGES[:1], ["a", "b"])


def test_explain_cli(tmp_path):
    from PIL import Image

    from attnscope.cli import main

    Image.fromarray(IMAGES[0]).save(tmp_path / "photo.png")
    out = tmp_path / "ex"
    args = ["explain", str(tmp_path / "photo.png"), "--model", "shapes-mmdit", "--out", str(out)]
    assert main(args + ["--concepts", "circle", "square", "background", "--draws", "2"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["method"] == "concept_attention" and record["draws"] == 2 and record["image_size"] == [64, 64]
    assert {"segments.png", "overlay_circle.png", "mask_background.png"} <= {p.name for p in out.iterdir()}
    assert main(args + ["--prompt", "a red circle"]) == 0  # DAAM word maps of the caption
    assert json.loads((out / "record.json").read_text())["keys"] == ["red", "circle"]


@pytest.mark.parametrize("extra,message", [(["--concepts", "a", "A"], "more than once"), (["--noise", "1"], "between 0 and 1"),
                                           ([], "Nothing to locate")])
def test_explain_bad_input_is_one_line(tmp_path, capsys, extra, message):
    from PIL import Image

    from attnscope.cli import main

    Image.fromarray(IMAGES[0]).save(tmp_path / "photo.png")
    code = main(["explain", str(tmp_path / "photo.png"), "--out", str(tmp_path / "o"), *extra]
                + ([] if "--concepts" in extra else ["--concepts", "x"] if extra else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and not (tmp_path / "o").exists()
