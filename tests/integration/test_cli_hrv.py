"""``attnscope hrv build|merge|show`` on the shipped model, and bad input as one-line errors."""

import pytest

import attnscope
from attnscope.cli import main


def test_build_shards_merge_and_show(tmp_path, capsys):
    for part in (0, 1):
        assert main(["hrv", "build", "--n", "2", "--steps", "1", "--shard", f"{part}/2",
                     "--out", str(tmp_path / f"part{part}")]) == 0
    assert main(["hrv", "merge", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out", str(tmp_path / "all")]) == 0
    hrv = attnscope.load(tmp_path / "all")
    assert hrv.concepts == ["colour", "shape", "size", "relation"] and hrv.meta["done"] == [0, 1]
    capsys.readouterr()
    assert main(["hrv", "show", str(tmp_path / "all"), "--top", "2", "--concept", "shape"]) == 0
    shown = capsys.readouterr().out
    assert "| shape |" in shown and "| colour |" not in shown
    assert main(["hrv", "show", str(tmp_path / "all"), "--plot", str(tmp_path / "hrv.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "hrv.png").size[0] > hrv.n_heads  # one column per head
    capsys.readouterr()
    assert main(["hrv", "show", str(tmp_path / "all"), "--plot", str(tmp_path / "hrv.jpg")]) == 2
    assert "must name a .png file" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["hrv", "build", "--shard", "2/2", "--out", "x"], "I must lie in 0..N-1"),
    (["hrv", "build", "--steps", "0", "--out", "x"], "--steps must be at least 1"),
    (["hrv", "build", "--concepts", "nope.json", "--out", "x"], "use one of ('shapes', 'default')"),
    (["hrv", "build", "--model", "some/model", "--out", "x"], "--prompts FILE"),
    (["hrv", "show", "no-such-folder"], "is not an attnscope result"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_generate_strengthens_and_adjusts_with_a_saved_hrv(tmp_path, capsys):
    import json

    assert main(["hrv", "build", "--n", "2", "--steps", "1", "--out", str(tmp_path / "hrv")]) == 0
    base = ["generate", "a red circle", "--steps", "2", "--hrv", str(tmp_path / "hrv")]
    assert main(base + ["--strengthen", "circle:shape", "--adjust", "red:+colour:-shape",
                        "--out", str(tmp_path / "steered")]) == 0
    record = json.loads((tmp_path / "steered" / "record.json").read_text())
    assert record["steering"] == [["strengthen", "circle", "shape", None], ["adjust", "red", "colour", "shape"]]
    capsys.readouterr()
    for extra, message in ((["--strengthen", "circle"], "is not WORD:CONCEPT"),
                           (["--adjust", "red:colour:shape"], "is not WORD:+WANTED:-UNWANTED"),
                           (["--strengthen", "square:shape"], "'square' is not in the prompt; its words are: a red circle"),
                           (["--strengthen", "circle:texture"], "unknown concept 'texture'; the HRV has: colour, shape")):
        assert main(base + extra + ["--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "a red circle", "--steps", "1", "--strengthen", "circle:shape",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "give --hrv FOLDER" in capsys.readouterr().err and not (tmp_path / "bad").exists()
