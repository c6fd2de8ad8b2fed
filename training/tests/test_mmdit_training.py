"""The MM-DiT training shortcut is exact: one zero token with a log(256) logit bias equals SD3's 256 zero tokens."""

import json
import re

import pytest
import torch

from training import architectures as arch
from training.train_mmdit import ZeroTokenBias


@pytest.mark.parametrize("design", [{}, {"dual_attention": 2, "qk_norm": True}], ids=["sd3", "sd35"])
def test_one_biased_zero_token_equals_many(design):
    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer(**design).eval()
    latents = torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
    context = torch.randn(2, 5, 2 * arch.SD3_CLIP_WIDTH)
    pooled = torch.randn(2, 2 * arch.SD3_CLIP_WIDTH)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        many = torch.cat([context, torch.zeros(2, arch.SD3_ZERO_TOKENS, context.shape[-1])], dim=1)
        stock = transformer(latents, encoder_hidden_states=many, pooled_projections=pooled, timestep=t).sample
        one = torch.cat([context, torch.zeros(2, 1, context.shape[-1])], dim=1)
        with ZeroTokenBias(arch.SD3_ZERO_TOKENS, image_tokens=(16 // arch.SD3_PATCH) ** 2):
            short = transformer(latents, encoder_hidden_states=one, pooled_projections=pooled, timestep=t).sample
    torch.testing.assert_close(short, stock, atol=1e-4, rtol=1e-4)


def _ids(folder, caption):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return arch.token_ids(tokenizer, [caption])


def test_clip_encoders_reuse_the_unet_text_encoder():
    """SD3 reads the penultimate CLIP layer; here it is exactly the UNet encoder's last layer, frozen."""
    from transformers import CLIPTextModel

    from attnscope.pipelines import WEIGHTS
    from training.train_mmdit import clip_encoders_from

    folder = WEIGHTS / "shapes-unet"
    ids = _ids(folder, "a small green triangle above a red star")
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)(
            ids, output_hidden_states=True).hidden_states[-1]
        for encoder in clip_encoders_from(folder):
            out = encoder(ids, output_hidden_states=True)
            torch.testing.assert_close(out.hidden_states[-2], expected)
            assert out[0].shape == (1, arch.SD3_CLIP_WIDTH)
            assert not any(p.requires_grad for p in encoder.parameters())


def test_cached_caption_features_equal_encoding_each_batch():
    """Training indexes features computed once; each row equals encoding that caption in a step's batch."""
    from transformers import CLIPTokenizer

    from attnscope.pipelines import WEIGHTS
    from training.train_mmdit import caption_features, clip_encoders_from, encode

    folder = WEIGHTS / "shapes-unet"
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoders = clip_encoders_from(folder)
    captions = ["a red circle", "a small blue star below a large green cross", "an image of a cyan square"]
    context, pooled = caption_features(encoders, tokenizer, captions, batch=2)  # two chunks
    assert context.shape == (len(captions) + 1, arch.MAX_TOKENS + 1, 2 * arch.SD3_CLIP_WIDTH)
    with torch.no_grad():
        step_batch = [captions[2], "", captions[0]]
        expected_context, expected_pooled = encode(encoders, arch.token_ids(tokenizer, step_batch))
    rows = torch.tensor([2, len(captions), 0])  # the last row is the empty caption of a dropped one
    torch.testing.assert_close(context[rows], expected_context)
    torch.testing.assert_close(pooled[rows], expected_pooled)


def test_clip_encoders_refuse_a_foreign_text_encoder(tmp_path):
    from training.train_mmdit import clip_encoders_from

    arch.shapes_sd3_text_encoder(10).save_pretrained(tmp_path / "text_encoder")  # 4 layers, not a UNet's 3
    with pytest.raises(ValueError, match="--text-from"):
        clip_encoders_from(tmp_path)


def test_training_smoke_and_stock_pipeline(tmp_path):
    """Two steps train only the transformer, the result loads as a stock StableDiffusion3Pipeline
    folder, and training continues from that exported folder."""
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

    from training.train import main as train_main
    from training.train_mmdit import build_pipeline, main as mmdit_main

    common = ["--batch", "2", "--threads", "1", "--every", "1000"]
    train_main(["vae", "--out", str(tmp_path / "vae"), "--steps", "1"] + common)
    mmdit_main(["--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "mmdit"), "--steps", "2", "--bank", "8"] + common)
    pipe, state = build_pipeline(tmp_path / "vae", tmp_path / "mmdit")
    assert state["step"] == 2
    from safetensors.torch import load_file

    mmdit_main(["--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "other-batches"), "--steps", "2", "--bank-from",
                str(tmp_path / "mmdit"), "--bank", "8", "--batch-seed", "5"] + common)
    other = load_file(str(tmp_path / "other-batches" / "checkpoint.safetensors"))
    first = load_file(str(tmp_path / "mmdit" / "checkpoint.safetensors"))
    assert any(not torch.equal(value, first[name]) for name, value in other.items() if name.startswith("transformer/"))

    raw = build_pipeline(tmp_path / "vae", tmp_path / "mmdit", use_ema=False)[0].transformer.state_dict()
    stored = load_file(str(tmp_path / "mmdit" / "checkpoint.safetensors"))
    assert all(torch.equal(value, stored[f"transformer/{name}"]) for name, value in raw.items())  # export --raw
    assert any(not torch.equal(value, raw[name]) for name, value in pipe.transformer.state_dict().items())  # EMA ≠ raw
    from attnscope.pipelines import WEIGHTS
    from training.export import export
    from training.train_mmdit import clip_encoders_from

    for trained, original in zip([pipe.text_encoder, pipe.text_encoder_2], clip_encoders_from(WEIGHTS / "shapes-unet")):
        for (name, value), expected in zip(trained.state_dict().items(), original.state_dict().values()):
            assert torch.equal(value, expected), name  # the text side is frozen
    export(pipe, tmp_path / "exported", {"trained_steps": 2})
    mmdit_main(["--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "more"), "--steps", "3", "--bank-from",
                str(tmp_path / "mmdit"), "--bank", "8", "--init-from", str(tmp_path / "exported"),
                "--shape-weight", "cross=2", "--extra-ema", "0.9"] + common + ["--every", "1", "--keep-from", "3"])  # also runs the weighted scene draw
    from training.export import main as export_main

    export_main(["mmdit", "--vae", str(tmp_path / "vae"), "--run", str(tmp_path / "more"), "--run",
                 str(tmp_path / "more" / "keep" / "step-00003"), "--ema-decay", "0.9", "--out", str(tmp_path / "avg")])
    defaults = json.loads((tmp_path / "avg" / "attnscope_defaults.json").read_text())
    assert defaults["weights"] == "ema@0.9" and [run["trained_steps"] for run in defaults["averaged"]] == [3, 3]
    last, more = build_pipeline(tmp_path / "vae", tmp_path / "more")
    kept, kept_state = build_pipeline(tmp_path / "vae", tmp_path / "more" / "keep" / "step-00003")
    assert kept_state["step"] == 3 and sorted(p.name for p in (tmp_path / "more" / "keep").iterdir()) == ["step-00003"]
    assert all(torch.equal(value, kept.transformer.state_dict()[name]) for name, value in last.transformer.state_dict().items())
    assert more["step"] == 3 and more["init_from"] == str(tmp_path / "exported") and more["warmup_from"] == 2
    pipe.save_pretrained(tmp_path / "folder")
    again = DiffusionPipeline.from_pretrained(tmp_path / "folder", text_encoder_3=None, tokenizer_3=None)  # no T5, as for SD3 without T5
    assert isinstance(again, StableDiffusion3Pipeline)
    from attnscope.adapters import UnsupportedPipelineError
    from attnscope.pipelines import absent_components, load_pipeline

    assert absent_components(tmp_path / "folder")["text_encoder_3"] is None
    loaded = load_pipeline(str(tmp_path / "folder"), device="cpu", dtype="float32", require_adapter=False)
    assert isinstance(loaded, StableDiffusion3Pipeline)
    with pytest.raises(UnsupportedPipelineError):  # attnscope cannot trace SD3 yet: refused before any work
        load_pipeline(str(tmp_path / "folder"), device="cpu", dtype="float32")
    again.set_progress_bar_config(disable=True)
    image = again("a red circle", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_adaln_zero_starts_at_zero_and_still_learns():
    """adaLN-Zero: the prediction starts at exactly 0, yet the output projection gets a gradient."""
    from training.train_mmdit import adaln_zero

    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer()
    adaln_zero(transformer)
    latent = torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
    context = torch.randn(2, 5, 2 * arch.SD3_CLIP_WIDTH)
    pred = transformer(latent, encoder_hidden_states=context, pooled_projections=torch.randn(2, 2 * arch.SD3_CLIP_WIDTH),
                       timestep=torch.tensor([100.0, 900.0])).sample
    assert torch.equal(pred, torch.zeros_like(pred))
    torch.nn.functional.mse_loss(pred, latent).backward()
    assert transformer.proj_out.weight.grad.abs().sum() > 0


def test_repa_training_resumes_exports_stock_and_leaves_no_hooks(tmp_path):
    """REPA trains a projector next to the transformer; the export is still a stock SD3 transformer of
    the run's own size, the UNet features are cached once, and a resume with another size is refused."""
    from safetensors.torch import load_file

    from attnscope.pipelines import WEIGHTS
    from training.train_mmdit import build_pipeline, main as mmdit_main

    vae, out = WEIGHTS / "shapes-unet", tmp_path / "repa"
    def flags(patch=2):
        return ["--vae", str(vae), "--out", str(out), "--bank", "8", "--batch", "2", "--threads", "1", "--every", "1000",
                "--patch", str(patch), "--heads", "2", "--blocks", "3", "--repa", "0.5", "--repa-block", "1",
                "--dual-attention", "1", "--qk-norm"]

    mmdit_main(flags() + ["--steps", "2"])
    features = load_file(str(out / "repa.safetensors"))["features"]
    assert features.shape == (8, 8 * 8, 96)  # the UNet's 8×8 up-path block (96 channels), one row per token
    tensors = load_file(str(out / "checkpoint.safetensors"))
    assert any(k.startswith("repa_projector/") for k in tensors)
    mmdit_main(flags() + ["--steps", "3"])  # resumes; the cached features are reused, not recomputed
    assert torch.equal(load_file(str(out / "repa.safetensors"))["features"], features)
    pipe, state = build_pipeline(vae, out)
    assert state["step"] == 3
    transformer = pipe.transformer
    assert (transformer.config.patch_size, transformer.config.num_layers, transformer.config.num_attention_heads) == (2, 3, 2)
    assert tuple(transformer.config.dual_attention_layers) == (0,) and transformer.config.qk_norm == "rms_norm"
    assert not any(block._forward_hooks for block in transformer.transformer_blocks)
    with pytest.raises(SystemExit, match="--patch 2"):
        mmdit_main(flags(patch=1) + ["--steps", "4"])


def test_compiled_step_is_one_graph_with_the_zero_token_bias_and_the_repa_tap():
    """--compile traces the zero-token mode and the REPA hook, both entered every step, into one graph:
    no recompiles as σ and the batch change, and the same prediction and tapped tokens as eager."""
    import torch._dynamo

    from training.repa import BlockTap

    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer(heads=2, blocks=2, dual_attention=1)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    forward = torch.compile(transformer, backend="eager")
    bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS, image_tokens=(16 // arch.SD3_PATCH) ** 2)
    for step in range(3):
        latent = torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
        context = torch.randn(2, 6, 2 * arch.SD3_CLIP_WIDTH)
        kwargs = dict(encoder_hidden_states=context, pooled_projections=torch.randn(2, 2 * arch.SD3_CLIP_WIDTH),
                      timestep=torch.rand(2) * 1000)
        with bias, BlockTap(transformer, 1) as tap:
            eager = transformer(latent, **kwargs).sample
            eager_tokens = tap.hidden
        with bias, BlockTap(transformer, 1) as tap:
            traced = forward(latent, **kwargs).sample
            torch.testing.assert_close(tap.hidden, eager_tokens)
        torch.testing.assert_close(traced, eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_block_tap_removes_its_hook_after_an_exception():
    from training.repa import BlockTap

    transformer = arch.shapes_sd3_transformer(patch=2, heads=2, blocks=2)
    with pytest.raises(RuntimeError):
        with BlockTap(transformer, 0):
            raise RuntimeError("boom")
    assert not transformer.transformer_blocks[0]._forward_hooks
    with pytest.raises(ValueError, match="--repa-block"):
        BlockTap(transformer, 2)


def test_repa_needs_a_unet_block_at_the_token_grid():
    from diffusers import UNet2DConditionModel

    from attnscope.pipelines import WEIGHTS
    from training.repa import _feature_module

    unet = UNet2DConditionModel.from_pretrained(WEIGHTS / "shapes-unet" / "unet", torch_dtype=torch.float32)
    assert _feature_module(unet, 8) is unet.up_blocks[1].attentions[-1]
    with pytest.raises(ValueError, match="--patch"):
        _feature_module(unet, 4)  # patch 4: a 4×4 grid, where the UNet's up path has no attention


def test_cooldown_is_flat_then_linear_to_zero():
    from training.train_mmdit import cooldown_scale

    total, cooldown = 1000, 0.3
    scales = [cooldown_scale(step, total, cooldown) for step in range(total + 1)]
    assert all(scale == 1.0 for scale in scales[:701])  # stable until the last 30 %
    assert scales[-1] == 0.0 and scales[850] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(scales, scales[1:]))
    assert cooldown_scale(999, total, 0.0) == 1.0  # no cooldown: the rate never decays


def test_a_continued_run_warms_up_again_from_its_first_step():
    import argparse

    from training.train_mmdit import scheduled_lr

    args = argparse.Namespace(lr=1e-3, warmup=200, steps=14_000, cooldown=0.25)
    rates = [scheduled_lr(step, args, warmup_from=10_000) for step in range(10_000, 14_001)]
    assert rates[0] == pytest.approx(args.lr / args.warmup) and rates[199] == pytest.approx(args.lr)
    assert all(a < b for a, b in zip(rates[:199], rates[1:200]))  # the fresh optimizer ramps up
    assert rates[-1] == 0.0 and all(a >= b for a, b in zip(rates[199:], rates[200:]))
    assert scheduled_lr(10_000, args) == pytest.approx(args.lr)  # a run from scratch is past its warmup there


@pytest.mark.parametrize("extra, message", [(["--cooldown", "0.3"], "needs --steps"),
                                            (["--cooldown", "1.5", "--steps", "10"], r"in \[0, 1\]"),
                                            (["--distill", "2"], r"teacher's share .* in \[0, 1\]"),
                                            (["--sigma-std", "0"], "must be positive"),
                                            (["--input-perturbation", "-0.1"], "0 \\(off\\) or positive")])
def test_training_arguments_are_checked(tmp_path, capsys, extra, message):
    from training.train_mmdit import main as mmdit_main

    with pytest.raises(SystemExit):
        mmdit_main(["--vae", str(tmp_path), "--out", str(tmp_path / "run")] + extra)
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_input_perturbation_moves_only_the_input():
    """γ = 0 is the plain flow path and draws nothing; γ > 0 adds noise of scale σγ to the input only."""
    from training.train_mmdit import noised_input

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 16, 16, generator=gen), torch.randn(4, 4, 16, 16, generator=gen)
    sigma = torch.tensor([0.1, 0.4, 0.7, 1.0])[:, None, None, None]
    plain_gen = torch.Generator().manual_seed(1)
    plain = noised_input(x0, noise, sigma, 0.0, plain_gen)
    torch.testing.assert_close(plain, (1 - sigma) * x0 + sigma * noise, rtol=0, atol=0)
    assert torch.equal(plain_gen.get_state(), torch.Generator().manual_seed(1).get_state())
    perturbed = noised_input(x0, noise, sigma, 0.1, torch.Generator().manual_seed(1))
    extra = (perturbed - plain) / sigma
    assert 0.09 < extra.std().item() < 0.11 and abs(extra.mean().item()) < 0.01


def test_mmdit_on_its_own_8x8_vae_trains_with_repa_and_refuses_mixed_latents(tmp_path):
    """A run may bring its own VAE (here 8×8×8 latents, patch 1): REPA's UNet then reads the same scenes
    encoded by its own VAE, the export is a stock SD3 folder of that shape, and every mix of latent
    spaces (resume, export, a reused bank) is refused with a one-line error."""
    import json

    from safetensors.torch import load_file

    from attnscope.pipelines import WEIGHTS
    from training.train import main as train_main
    from training.train_mmdit import build_pipeline, main as mmdit_main

    common = ["--batch", "2", "--threads", "1", "--every", "1000"]
    train_main(["vae", "--out", str(tmp_path / "vae8"), "--steps", "1", "--levels", "4", "--latent-channels", "8"] + common)
    out, shipped = tmp_path / "mmdit", WEIGHTS / "shapes-unet"
    flags = ["--out", str(out), "--bank", "8", "--patch", "1", "--heads", "2", "--blocks", "2",
             "--repa", "0.5", "--repa-block", "1"] + common
    mmdit_main(["--vae", str(tmp_path / "vae8"), "--steps", "2"] + flags)
    assert load_file(str(out / "bank.safetensors"))["latents"].shape == (8, 8, 8, 8)
    teacher_bank = load_file(str(out / "repa-bank" / "bank.safetensors"))["latents"]
    assert teacher_bank.shape == (8, 4, 16, 16)  # the UNet's own latents ...
    assert json.loads((out / "repa-bank" / "bank.json").read_text()) == json.loads((out / "bank.json").read_text())  # ... of the same scenes
    assert load_file(str(out / "repa.safetensors"))["features"].shape == (8, 8 * 8, 96)
    pipe, state = build_pipeline(tmp_path / "vae8", out)
    config = pipe.transformer.config
    assert state["step"] == 2 and (config.in_channels, config.sample_size, config.patch_size) == (8, 8, 1)
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)
    with pytest.raises(SystemExit, match="latents; resume it with the --vae"):
        mmdit_main(["--vae", str(shipped), "--steps", "3"] + flags)
    with pytest.raises(SystemExit, match="pass the --vae the run was trained with"):
        build_pipeline(shipped, out)
    with pytest.raises(SystemExit, match="holds .* latents"):
        mmdit_main(["--vae", str(shipped), "--steps", "1", "--out", str(tmp_path / "other"), "--bank-from", str(out),
                    "--bank", "8"] + common)
    with pytest.raises(SystemExit, match="--levels 4 --latent-channels 8"):
        train_main(["vae", "--out", str(tmp_path / "vae8"), "--steps", "2"] + common)  # resumed with the default design
    with pytest.raises(ValueError, match="2–5 levels"):
        arch.shapes_vae(levels=1)


def test_warm_start_copies_every_full_resolution_layer_of_a_shallower_vae():
    """Encoder blocks keep their index, decoder blocks shift by the added levels; only the new latent end is fresh."""
    from training.train import warm_start_vae

    torch.manual_seed(0)
    source, deep = arch.shapes_vae(), arch.shapes_vae(levels=4, latent_channels=8)
    fresh = warm_start_vae(deep, source)
    old, new = source.state_dict(), deep.state_dict()
    for key in ("encoder.conv_in.weight", "encoder.down_blocks.2.resnets.0.conv1.weight", "encoder.mid_block.resnets.0.conv1.weight"):
        assert torch.equal(new[key], old[key])
    for level in range(3):  # the image-side decoder blocks, counted from the image end
        key = "decoder.up_blocks.{}.resnets.0.conv1.weight"
        assert torch.equal(new[key.format(level + 1)], old[key.format(level)])
    assert torch.equal(new["decoder.conv_out.weight"], old["decoder.conv_out.weight"])
    assert "decoder.up_blocks.0.resnets.0.conv1.weight" in fresh and "encoder.down_blocks.3.resnets.0.conv1.weight" in fresh
    assert all(key.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv") for key in fresh)
    with pytest.raises(ValueError, match="at most as many --levels"):
        warm_start_vae(source, deep)


def test_shape_weights_shift_the_draw_and_default_keeps_the_uniform_stream():
    from training.train_mmdit import draw_scenes, main, scene_weights

    captions = ["a red cross", "a blue circle", "a green cross and a small red square", "a star"]
    weights = scene_weights(captions, {"cross": 3.0})
    assert weights.tolist() == [3.0, 1.0, 2.0, 1.0]
    assert scene_weights(captions, {}) is None
    uniform = draw_scenes(4, 8, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(0)))
    drawn = draw_scenes(4, 70_000, torch.Generator().manual_seed(0), weights)
    share = torch.bincount(drawn, minlength=4).double() / len(drawn)
    torch.testing.assert_close(share, weights / weights.sum(), atol=0.01, rtol=0)
    for bad in ("cross", "hexagon=2", "cross=0", "cross=x"):
        with pytest.raises(SystemExit):
            main(["--vae", "v", "--out", "o", "--shape-weight", bad])
