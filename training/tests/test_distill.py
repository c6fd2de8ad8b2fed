"""The UNet teacher's ε̂, read as a rectified-flow velocity, is the same denoiser on the same noisy latent."""

import pytest
import torch

from attnscope.pipelines import WEIGHTS
from training import architectures as arch
from training.distill import FlowTeacher, ddpm_timestep, flow_velocity


def _sigma_of(alpha_bar: torch.Tensor) -> torch.Tensor:
    """The flow level whose signal share is ``alpha_bar``: σ / (1 − σ) = sqrt((1 − ᾱ) / ᾱ)."""
    ratio = ((1 - alpha_bar) / alpha_bar).sqrt()
    return ratio / (1 + ratio)


def test_ddpm_timestep_inverts_the_schedule():
    alphas_cumprod = arch.shapes_scheduler().alphas_cumprod
    steps = torch.tensor([0, 1, 17, 250, 500, 998, 999])
    timestep, valid = ddpm_timestep(alphas_cumprod, _sigma_of(alphas_cumprod[steps].double()))
    torch.testing.assert_close(timestep, steps.float(), atol=1e-3, rtol=0)
    assert valid.all()
    between = _sigma_of(alphas_cumprod[[300, 301]].double().log().mean().exp()[None])
    assert 300 < ddpm_timestep(alphas_cumprod, between)[0].item() < 301
    beyond, valid = ddpm_timestep(alphas_cumprod, torch.tensor([0.97, 1.0]))
    assert not valid.any() and torch.all(beyond == 999)  # noisier than the teacher was trained on


def test_flow_velocity_of_the_true_noise_is_the_flow_target():
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.05, 0.5, 0.9])[:, None, None, None]
    noisy = (1 - sigma) * x0 + sigma * noise
    torch.testing.assert_close(flow_velocity(noise, noisy, sigma), noise - x0, atol=1e-5, rtol=1e-5)


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(WEIGHTS / "shapes-unet" / "tokenizer")


def test_teacher_runs_the_unet_on_the_matching_ddpm_sample():
    """At σ matching DDPM step t, the teacher's UNet input is ``add_noise(x0, ε, t)`` and its answer converts exactly."""
    torch.set_num_threads(1)
    tokenizer = _tokenizer()
    teacher = FlowTeacher(WEIGHTS / "shapes-unet", tokenizer, window=(0.0, 1.0))
    scheduler = arch.shapes_scheduler()
    torch.manual_seed(0)
    x0, noise = torch.randn(2, arch.LATENT_CHANNELS, 16, 16), torch.randn(2, arch.LATENT_CHANNELS, 16, 16)
    steps = torch.tensor([200, 700])
    sigma = _sigma_of(scheduler.alphas_cumprod[steps].double()).float()[:, None, None, None]
    noisy = (1 - sigma) * x0 + sigma * noise
    ids = arch.token_ids(tokenizer, ["a red circle", ""])
    velocity, valid = teacher.velocity(noisy, sigma, ids)
    with torch.no_grad():
        epsilon = teacher.unet(scheduler.add_noise(x0, noise, steps), steps,
                               encoder_hidden_states=teacher.text_encoder(ids)[0]).sample
    torch.testing.assert_close(velocity, flow_velocity(epsilon, noisy, sigma), atol=1e-4, rtol=1e-4)
    assert valid.all()
    _, windowed = FlowTeacher(WEIGHTS / "shapes-unet", tokenizer, window=(0.5, 1.0)).velocity(noisy, sigma, ids)
    assert windowed.tolist() == (sigma.flatten() >= 0.5).tolist()


def test_teacher_refuses_a_folder_without_a_unet_or_with_another_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="--distill-from"):
        FlowTeacher(tmp_path, _tokenizer())
    other = _tokenizer()
    other.add_tokens(["zebra"])
    with pytest.raises(ValueError, match="--text-from"):
        FlowTeacher(WEIGHTS / "shapes-unet", other)


def test_distillation_with_an_empty_window_trains_exactly_as_without(tmp_path):
    """The teacher only replaces the target: where it is not used, training is bit-for-bit the plain run."""
    from safetensors.torch import load_file

    from training.train_mmdit import main as mmdit_main

    def run(name, extra):
        mmdit_main(["--vae", str(WEIGHTS / "shapes-unet"), "--out", str(tmp_path / name), "--bank", "8", "--batch", "2",
                    "--threads", "1", "--every", "1000", "--heads", "2", "--blocks", "2", "--repa", "0.5", "--repa-block", "1", "--steps", "2"] + extra)
        return load_file(str(tmp_path / name / "checkpoint.safetensors"))

    plain = run("plain", [])
    unused = run("unused", ["--bank-from", str(tmp_path / "plain"), "--distill", "1", "--distill-sigmas", "2", "3"])
    used = run("used", ["--bank-from", str(tmp_path / "plain"), "--distill", "1", "--distill-sigmas", "0", "1"])
    assert plain.keys() == unused.keys() == used.keys()
    assert all(torch.equal(plain[k], unused[k]) for k in plain)
    assert not all(torch.equal(plain[k], used[k]) for k in plain)
