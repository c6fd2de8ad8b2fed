"""The command line on a tiny pipeline saved to a local folder."""

import json

import pytest

from attnscope.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sd_pipe):
    path = tmp_path_factory.mktemp("model") / "tiny-sd"
    sd_pipe.save_pretrained(path)
    return path


def test_generate_writes_everything(model_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["generate", "a cat with a red hat", "--model", str(model_dir), "--steps", "2",
                 "--height", "32", "--width", "48", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    assert record["words"] == ["cat", "red", "hat"] and record["seed"] == 0
    assert record["image_size"] == [32, 48]
    for word in record["words"]:
        assert (out / f"overlay_{word}.png").is_file() and (out / f"mask_{word}.png").is_file()
    assert (out / "maps" / "tensors.safetensors").is_file()
    assert not list(out.glob(".attnscope-*"))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "/definitely/not/here"], "does not exist"),
        (["--words", "giraffe"], "not in the prompt"),
        (["--height", "33"], "multiple of"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_errors_are_one_line(model_dir, tmp_path, capsys, extra, message):
    args = ["generate", "a cat", "--model", str(model_dir), "--steps", "1", "--out", str(tmp_path / "o")] + extra
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("attnscope: error:") and message in errors[0]
    assert not (tmp_path / "o" / "record.json").exists()


def test_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    assert main(["generate", "a cat", "--model", str(tmp_path / "junk")]) == 2
    assert "model_index.json" in capsys.readouterr().err
