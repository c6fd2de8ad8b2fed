"""Every bad input gets one line (CLI: exit status 2, nothing written) or a typed error (API)."""

import json

import pytest
import torch

import attnscope
from attnscope.cli import build_parser, main
from attnscope.io import ResultFileError

LONG = ("a small red circle to the left of a large blue square and a purple cross below an orange "
        "diamond above a green star")  # 24 words: longer than the shipped model's 24-token context


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sd_pipe):
    path = tmp_path_factory.mktemp("model") / "tiny-sd"
    sd_pipe.save_pretrained(path)
    return path


@pytest.fixture
def no_generation(monkeypatch):
    """Fails the test if a trace (and so a generation) starts: errors must come first."""
    import attnscope.core.trace as core_trace

    def refuse(*args, **kwargs):
        raise AssertionError("a generation started before the input was checked")

    monkeypatch.setattr(core_trace, "trace", refuse)


def _one_error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnscope: error:"), lines
    return lines[0]


@pytest.mark.parametrize("extra,message", [
    (["--height", "70"], "multiple of 8 (e.g. 64 or 72)"),
    (["--height", "68", "--width", "44"], "multiple of 8"),
    (["--height", "36", "--width", "36"], "multiple of 8"),
    (["--words", "dog"], "'dog' is not in the prompt; its words are: a cat"),
    (["--device", "foo"], "Unknown device 'foo'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--threshold", "2"], "--threshold must lie in [0, 1]"),
])
def test_generate_refuses_before_generating(model_dir, tmp_path, capsys, no_generation, extra, message):
    out = tmp_path / "o"
    assert main(["generate", "a cat", "--model", str(model_dir), "--out", str(out)] + extra) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_cuda_on_a_cpu_only_torch(model_dir, tmp_path, capsys, no_generation):
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    assert main(["generate", "a cat", "--model", str(model_dir), "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "not available in this torch build; available: cpu" in _one_error_line(capsys)


def test_empty_prompt_and_stop_words_only(model_dir, tmp_path, capsys, no_generation):
    assert main(["generate", "  ", "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "The prompt is empty" in _one_error_line(capsys)
    assert main(["generate", "a the of", "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "no words to map besides stop words" in _one_error_line(capsys)


def test_out_naming_an_existing_file(model_dir, tmp_path, capsys, no_generation):
    (tmp_path / "taken").write_text("keep me")
    assert main(["generate", "a cat", "--model", str(model_dir), "--out", str(tmp_path / "taken")]) == 2
    assert "is an existing file" in _one_error_line(capsys)
    assert (tmp_path / "taken").read_text() == "keep me"


def test_phrases_are_words_too(model_dir, tmp_path):
    out = tmp_path / "o"
    assert main(["generate", "a cat with a red hat", "--model", str(model_dir), "--steps", "1",
                 "--words", "red hat", "cat", "--out", str(out)]) == 0
    assert (out / "overlay_red_hat.png").is_file() and (out / "mask_cat.png").is_file()


def test_long_prompt_says_what_was_cut(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["generate", LONG, "--steps", "1", "--out", str(out)]) == 0
    notes = [l for l in capsys.readouterr().err.splitlines() if l.startswith("attnscope:")]
    assert notes == ["attnscope: note: the prompt is longer than the model's 24-token context; cut: green star"]
    assert main(["generate", LONG, "--steps", "1", "--words", "star", "--out", str(tmp_path / "p")]) == 2
    assert "'star' was cut: the prompt is longer than the model's 24-token context" in _one_error_line(capsys)


def test_long_prompt_in_the_api_warns_and_explains(tmp_path):
    pipe = attnscope.load_pipeline("shapes-unet", device="cpu")
    with pytest.warns(UserWarning, match="fill all 24 tokens"):
        with attnscope.trace(pipe) as tc:
            pipe(LONG, num_inference_steps=1)
    heat = tc.daam(prompt=LONG)
    with pytest.raises(KeyError, match="'star' was cut"):
        heat.word("star")
    with pytest.raises(KeyError, match="not a word of the prompt"):
        heat.word("dog")


def test_ctrl_c_writes_nothing(model_dir, tmp_path, capsys, monkeypatch):
    from attnscope.methods.daam import DAAMResult

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(DAAMResult, "save", interrupted)
    out = tmp_path / "o"
    assert main(["generate", "a cat", "--model", str(model_dir), "--steps", "1", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "attnscope: interrupted; nothing written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,message", [
    (["--batch", "0"], "--batch must be at least 1"),
    (["--n", "0"], "--n must be at least 1"),
    (["--noise", "1.5"], "--noise must lie strictly between 0 and 1"),
    (["--draws", "0"], "--draws must be at least 1"),
    (["--methods", "nope"], "Unknown method(s) nope; available:"),
])
def test_eval_refuses_bad_numbers(tmp_path, capsys, no_generation, extra, message):
    assert main(["eval", "--n", "2", "--out", str(tmp_path / "e")] + extra) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "e").exists()


def test_every_option_has_help_with_its_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, command in commands.items():
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help text"
                assert "default" in action.help or action.default is not None, (name, action.option_strings)
        options = [a for a in command._actions if a.option_strings and a.dest != "help"]
        assert text.count("default") >= len(options), name


@pytest.fixture(scope="module")
def saved(sd_pipe, tmp_path_factory):
    with attnscope.trace(sd_pipe) as tc:
        sd_pipe("a cat", num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    return tc.daam().save(tmp_path_factory.mktemp("saved") / "r")


def _edited_copy(saved, tmp_path, edit):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    record = json.loads((copy / "attnscope.json").read_text())
    edit(record)
    (copy / "attnscope.json").write_text(json.dumps(record))
    return copy


@pytest.mark.parametrize("edit,field", [
    (lambda r: r.update(image_hw=[64, 64]), "image_hw"),
    (lambda r: r["head_index"].update({next(iter(r["head_index"])): [0]}), "layers"),
    (lambda r: r["head_index"].update({next(iter(r["head_index"])): [0, 99]}), "head_index"),
    (lambda r: r.update(prompt_of_image=[0, 0]), "prompt_of_image"),
    (lambda r: r.update(format="2"), "format"),
    (lambda r: r.update(image_hw="big"), "wrong type"),
    (lambda r: r.pop("layers"), "'layers' is missing"),
])
def test_saved_json_is_checked_against_the_tensors(saved, tmp_path, edit, field):
    with pytest.raises(ResultFileError, match=field) as err:
        attnscope.load(_edited_copy(saved, tmp_path, edit))
    assert str(tmp_path) in str(err.value)


def test_altered_tensor_bytes_fail_their_checksum(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    data = bytearray((copy / "tensors.safetensors").read_bytes())
    data[-5] ^= 0xFF  # a byte of the last tensor's data
    (copy / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(ResultFileError, match="does not match its checksum"):
        attnscope.load(copy)
    assert torch.equal(attnscope.load(saved).word("cat"), attnscope.load(saved).word("cat"))


def test_readme_python_example_uses_current_diffusers_arguments(model_dir):
    import re
    import warnings
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme, re.S))
    assert "from_pretrained" in code and "torch_dtype" not in code
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    assert not [w for w in caught if "dtype" in str(w.message)]
