"""Recipes: they parse, the code's defaults are theirs, and each reproduces end to end at smoke scale."""

import importlib
import json

import pytest
import torch

from training import reproduce
from training.errors import TrainingError

RECIPES = ["shapes-vae", "shapes-unet", "shapes-mmdit"]


@pytest.mark.parametrize("name", RECIPES)
def test_every_stage_of_a_recipe_parses_in_full_and_at_smoke_scale(name, tmp_path):
    recipe = reproduce.load_recipe(name)
    assert recipe["name"] == name
    for smoke in (False, True):
        stages, _ = reproduce.plan(recipe, tmp_path, smoke=smoke)
        for stage, argv in stages:
            importlib.import_module(f"training.{stage['command'][0]}").parse_args(argv)
    assert stages[-1][0]["command"][0] == ("train" if name == "shapes-vae" else "export")  # models end exported


@pytest.mark.parametrize("name", RECIPES)
def test_the_code_defaults_are_the_recipe(name):
    """Each stage's arguments, less its paths, equal the defaults of its command, so that the plain
    command (``python -m training.train_mmdit --out runs/x``) trains the shipped recipe. A run trained
    over several stages (the VAE, whose last stage lowers the learning rate) has the first stage's
    settings and the last stage's --steps as defaults."""
    recipe = reproduce.load_recipe(name)
    stages, _ = reproduce.plan(recipe, "runs/x")
    paths = {"--out", "--vae", "--run", "--text-from", "--repa-from"}
    runs = {}  # output folder → its stages' arguments, in order
    for stage, argv in stages:
        runs.setdefault(stage["args"]["--out"], []).append((stage, argv))
    checked = 0
    for parts in runs.values():
        (stage, argv), (_, last_argv) = parts[0], parts[-1]
        module = importlib.import_module(f"training.{stage['command'][0]}")
        given, last = vars(module.parse_args(argv)), vars(module.parse_args(last_argv))
        plain = vars(module.parse_args(stage["command"][1:] + [arg for flag in paths & set(stage["args"])
                                                                for arg in (flag, "x")]))
        for flag in set(stage["args"]) - paths:
            key = "shape_weights" if flag == "--shape-weight" else flag.lstrip("-").replace("-", "_")
            assert plain[key] == (last if key == "steps" else given)[key], (stage["name"], flag)
            checked += 1
    assert checked >= 5


def test_the_mmdit_recipe_trains_on_the_shipped_unet_unless_told_otherwise(tmp_path):
    from attnscope.pipelines import WEIGHTS

    recipe = reproduce.load_recipe("shapes-mmdit")
    stages, values = reproduce.plan(recipe, tmp_path)
    assert values["unet"] == str(WEIGHTS / "shapes-unet")
    stages, values = reproduce.plan(recipe, tmp_path, {"unet": "runs/u/model"})
    assert stages[0][1][stages[0][1].index("--vae") + 1] == "runs/u/model"
    with pytest.raises(TrainingError, match="no input vae"):
        reproduce.plan(recipe, tmp_path, {"vae": "x"})


def _generates(folder):
    from diffusers import DiffusionPipeline

    from attnscope.pipelines import absent_components

    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, **absent_components(folder))
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=1, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("name, denoiser", [("shapes-unet", "unet"), ("shapes-mmdit", "transformer")])
def test_a_recipe_reproduces_end_to_end_at_smoke_scale(name, denoiser, tmp_path):
    out = tmp_path / name
    reproduce.main([name, "--out", str(out), "--smoke"])
    model = out / "model"
    defaults = json.loads((model / "attnscope_defaults.json").read_text())
    assert defaults["trained_steps"] == 2 and defaults["guidance_scale"] == {"unet": 7.5, "transformer": 7.0}[denoiser]
    assert (model / denoiser / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "reproduce.json").read_text())["smoke"] is True
    _generates(model)


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    reproduce.main(["shapes-unet", "--out", str(tmp_path / "run"), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["training.text_identity", "training.export"]
    assert "--steps 7453" in lines[0] and "--identity 0.1" in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [(["shapes-dit"], "No recipe 'shapes-dit'"),
                                           (["shapes-mmdit", "--input", "unet"], "NAME=FOLDER")])
def test_mistakes_end_in_one_error_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(argv + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_a_stage_with_a_bad_argument_stops_the_recipe_before_anything_runs(tmp_path):
    recipe = reproduce.load_recipe("shapes-unet")
    recipe["stages"][0]["args"]["--dual-attention"] = 4
    with pytest.raises(TrainingError, match="stage 'unet'.*--dual-attention"):
        reproduce.reproduce(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
