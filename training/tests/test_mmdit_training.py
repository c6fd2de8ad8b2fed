"""MM-DiT training: the zero-token shortcut is exact, the text side is the UNet's and frozen, REPA and
the schedule do what they say, and a run resumes and exports as a stock SD3 folder."""

import re

import pytest
import torch

from attnscope.pipelines import WEIGHTS
from training import architectures as arch
from training.errors import TrainingError
from training.train_mmdit import ZeroTokenBias

SHIPPED_UNET = WEIGHTS / "shapes-unet"


def test_one_biased_zero_token_equals_many():
    """One zero token with a log(256) logit bias equals SD3's 256 zero tokens."""
    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer(heads=2, blocks=2).eval()
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


def _ids(folder, caption):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return arch.token_ids(tokenizer, [caption])


def test_clip_encoders_reuse_the_unet_text_encoder():
    """SD3 reads the penultimate CLIP layer; here it is exactly the UNet encoder's last layer, frozen."""
    from transformers import CLIPTextModel

    from training.train_mmdit import clip_encoders_from

    ids = _ids(SHIPPED_UNET, "a small green triangle above a red star")
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(SHIPPED_UNET / "text_encoder", dtype=torch.float32)(
            ids, output_hidden_states=True).hidden_states[-1]
        for encoder in clip_encoders_from(SHIPPED_UNET):
            out = encoder(ids, output_hidden_states=True)
            torch.testing.assert_close(out.hidden_states[-2], expected)
            assert out[0].shape == (1, arch.SD3_CLIP_WIDTH)
            assert not any(p.requires_grad for p in encoder.parameters())


def test_cached_caption_features_equal_encoding_each_batch():
    """Training indexes features computed once; each row equals encoding that caption in a step's batch."""
    from transformers import CLIPTokenizer

    from training.train_mmdit import caption_features, clip_encoders_from, encode

    tokenizer = CLIPTokenizer.from_pretrained(SHIPPED_UNET / "tokenizer")
    encoders = clip_encoders_from(SHIPPED_UNET)
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
    with pytest.raises(TrainingError, match="--text-from"):
        clip_encoders_from(tmp_path)


def test_training_resumes_exports_a_stock_sd3_folder_and_keeps_the_text_side_frozen(tmp_path):
    """A run on its own VAE (REPA's UNet then reads the scenes encoded by the UNet's VAE) trains only
    the transformer and a REPA projector, caches the teacher features once, resumes, refuses a resume
    with REPA switched off, and exports a stock StableDiffusion3Pipeline folder without the projector."""
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from training.export import main as export_main
    from training.train import main as train_main
    from training.train_mmdit import build_pipeline, clip_encoders_from, main as mmdit_main

    common = ["--batch", "2", "--threads", "1", "--every", "1000"]
    train_main(["vae", "--out", str(tmp_path / "vae"), "--steps", "1"] + common)
    out = tmp_path / "mmdit"
    flags = ["--vae", str(tmp_path / "vae"), "--out", str(out), "--bank", "8"] + common
    mmdit_main(flags + ["--steps", "2"])
    features = load_file(str(out / "repa.safetensors"))["features"]
    assert features.shape == (8, 8 * 8, 96)  # the UNet's 8×8 up-path block (96 channels), one row per token
    assert load_file(str(out / "repa-bank" / "bank.safetensors"))["latents"].shape == (8, 4, 16, 16)
    stored = load_file(str(out / "checkpoint.safetensors"))
    assert any(k.startswith("repa_projector/") for k in stored)
    mmdit_main(flags + ["--steps", "3"])  # resumes; the cached features are reused
    assert torch.equal(load_file(str(out / "repa.safetensors"))["features"], features)
    with pytest.raises(TrainingError, match="REPA on"):
        from training.train_mmdit import parse_args, train

        train(parse_args(flags + ["--steps", "4", "--repa", "0"]))

    pipe, state = build_pipeline(tmp_path / "vae", out)
    assert state["step"] == 3 and state["config"]["shape_weights"] == {"cross": 2.0, "diamond": 1.5, "star": 1.5}
    stored = load_file(str(out / "checkpoint.safetensors"))
    raw = {name[len("transformer/"):]: value for name, value in stored.items() if name.startswith("transformer/")}
    assert any(not torch.equal(value, raw[name]) for name, value in pipe.transformer.state_dict().items())  # EMA ≠ raw
    assert not any("repa" in name for name in pipe.transformer.state_dict())
    assert not any(block._forward_hooks for block in pipe.transformer.transformer_blocks)
    for trained, original in zip([pipe.text_encoder, pipe.text_encoder_2], clip_encoders_from(SHIPPED_UNET)):
        for (name, value), expected in zip(trained.state_dict().items(), original.state_dict().values()):
            assert torch.equal(value, expected), name  # the text side is frozen

    export_main(["mmdit", "--vae", str(tmp_path / "vae"), "--run", str(out), "--out", str(tmp_path / "model")])
    configs = sorted((tmp_path / "model").glob("*/config.json"))
    assert configs and not any("_name_or_path" in c.read_text() for c in configs)  # no training-machine paths
    again = DiffusionPipeline.from_pretrained(tmp_path / "model", text_encoder_3=None, tokenizer_3=None)
    assert isinstance(again, StableDiffusion3Pipeline)
    again.set_progress_bar_config(disable=True)
    assert again("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


def test_adaln_zero_starts_at_zero_and_still_learns():
    """adaLN-Zero: the prediction starts at exactly 0, yet the output projection gets a gradient."""
    from training.train_mmdit import adaln_zero

    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer(heads=2, blocks=2)
    adaln_zero(transformer)
    latent = torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
    context = torch.randn(2, 5, 2 * arch.SD3_CLIP_WIDTH)
    pred = transformer(latent, encoder_hidden_states=context, pooled_projections=torch.randn(2, 2 * arch.SD3_CLIP_WIDTH),
                       timestep=torch.tensor([100.0, 900.0])).sample
    assert torch.equal(pred, torch.zeros_like(pred))
    torch.nn.functional.mse_loss(pred, latent).backward()
    assert transformer.proj_out.weight.grad.abs().sum() > 0


def test_compiled_step_is_one_graph_with_the_zero_token_bias_and_the_repa_tap():
    """--compile traces the zero-token mode and the REPA hook, both entered every step, into one graph:
    no recompiles as σ and the batch change, and the same prediction and tapped tokens as eager."""
    import torch._dynamo

    from training.repa import BlockTap

    torch.manual_seed(0)
    transformer = arch.shapes_sd3_transformer(heads=2, blocks=2)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    forward = torch.compile(transformer, backend="eager")
    bias = ZeroTokenBias(arch.SD3_ZERO_TOKENS)
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

    transformer = arch.shapes_sd3_transformer(heads=2, blocks=2)
    with pytest.raises(RuntimeError):
        with BlockTap(transformer, 0):
            raise RuntimeError("boom")
    assert not transformer.transformer_blocks[0]._forward_hooks
    with pytest.raises(TrainingError, match="--repa-block"):
        BlockTap(transformer, 2)


def test_repa_reads_the_unet_block_at_the_token_grid():
    from diffusers import UNet2DConditionModel

    from training.repa import _feature_module

    unet = UNet2DConditionModel.from_pretrained(SHIPPED_UNET / "unet", torch_dtype=torch.float32)
    assert _feature_module(unet, 8) is unet.up_blocks[1].attentions[-1]
    with pytest.raises(TrainingError, match="--repa-from"):
        _feature_module(unet, 4)  # a 4×4 grid, where the UNet's up path has no attention


def test_alignment_loss_is_zero_for_an_exact_head_and_two_for_an_opposite_one():
    from training.repa import alignment_loss

    target, hidden = torch.randn(2, 64, 6), torch.randn(2, 64, 12)
    assert alignment_loss(hidden, target, lambda h: target).abs() < 1e-6
    assert torch.isclose(alignment_loss(hidden, target, lambda h: -target), torch.tensor(2.0))


def test_cooldown_is_flat_then_linear_to_zero():
    from training.train_mmdit import cooldown_scale

    total, cooldown = 1000, 0.3
    scales = [cooldown_scale(step, total, cooldown) for step in range(total + 1)]
    assert all(scale == 1.0 for scale in scales[:701])  # stable until the last 30 %
    assert scales[-1] == 0.0 and scales[850] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(scales, scales[1:]))
    assert cooldown_scale(999, total, 0.0) == 1.0  # no cooldown: the rate never decays


def test_learning_rate_warms_up_holds_then_cools_down():
    from training.train_mmdit import parse_args, scheduled_lr

    args = parse_args(["--out", "o"])  # the shipped schedule
    rates = [scheduled_lr(step, args) for step in range(args.steps + 1)]
    assert rates[0] == pytest.approx(args.lr / args.warmup) and rates[199] == pytest.approx(args.lr)
    assert all(a < b for a, b in zip(rates[:199], rates[1:200]))
    assert all(rate == pytest.approx(args.lr) for rate in rates[199:7001])
    assert rates[-1] == 0.0 and all(a >= b for a, b in zip(rates[199:], rates[200:]))


@pytest.mark.parametrize("extra, message", [(["--cooldown", "1.5"], r"in \[0, 1\]"),
                                            (["--sigma-std", "0"], "must be positive"),
                                            (["--repa-block", "8"], "0 to 7"),
                                            (["--shape-weight", "none", "--shape-weight", "cross=2"], "do not combine"),
                                            (["--dual-attention", "4"], "unrecognized arguments")])
def test_training_arguments_are_checked_before_anything_is_written(tmp_path, capsys, extra, message):
    from training.train_mmdit import main as mmdit_main

    with pytest.raises(SystemExit) as exit_info:
        mmdit_main(["--vae", str(tmp_path), "--out", str(tmp_path / "run")] + extra)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and re.search(message, err) and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_shape_weights_shift_the_draw_and_none_keeps_it_uniform():
    from training.train_mmdit import SHAPE_WEIGHTS, draw_scenes, parse_args, scene_weights

    captions = ["a red cross", "a blue circle", "a green cross and a small red square", "a star"]
    weights = scene_weights(captions, {"cross": 3.0})
    assert weights.tolist() == [3.0, 1.0, 2.0, 1.0]
    assert scene_weights(captions, {}) is None
    uniform = draw_scenes(4, 8, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(0)))
    drawn = draw_scenes(4, 70_000, torch.Generator().manual_seed(0), weights)
    share = torch.bincount(drawn, minlength=4).double() / len(drawn)
    torch.testing.assert_close(share, weights / weights.sum(), atol=0.01, rtol=0)
    assert parse_args(["--out", "o"]).shape_weights == SHAPE_WEIGHTS
    assert parse_args(["--out", "o", "--shape-weight", "star=3"]).shape_weights == {"star": 3.0}
    assert parse_args(["--out", "o", "--shape-weight", "none"]).shape_weights == {}
    for bad in ("cross", "hexagon=2", "cross=0", "cross=x"):
        with pytest.raises(TrainingError, match="--shape-weight"):
            parse_args(["--out", "o", "--shape-weight", bad])
