"""Paired comparison of two quality gates: the exact McNemar test and its input checks."""

import json
import math

import pytest

from attnscope.cli import main
from attnscope.eval.compare import compare_gates, load_gate, mcnemar_exact


def _records(matches, captions=None):
    captions = captions or [f"caption {i}" for i in range(len(matches))]
    return [{"caption": c, "match": m} for c, m in zip(captions, matches)]


def test_mcnemar_is_symmetric_and_one_without_a_winner():
    assert mcnemar_exact(3, 9) == mcnemar_exact(9, 3)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0


def test_mcnemar_equals_the_binomial_tail_it_defines():
    # 2 of 10 discordant images won by one side: 2 · P(Bin(10, ½) ≤ 2)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * sum(math.comb(10, k) for k in range(3)) / 2**10)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 2**6)


def test_counts_partition_the_images():
    first = _records([True, True, False, False, True])
    second = _records([True, False, True, False, False])
    result = compare_gates(first, second)
    assert (result.both, result.only_first, result.only_second, result.neither) == (1, 2, 1, 1)
    assert result.n == 5 and result.first_rate == 3 / 5 and result.second_rate == 2 / 5
    swapped = compare_gates(second, first)
    assert (swapped.only_first, swapped.only_second, swapped.p_value) == (1, 2, result.p_value)


def test_different_captions_are_refused():
    with pytest.raises(ValueError, match="same --seed and --n"):
        compare_gates(_records([True]), _records([True], ["another caption"]))


def test_bad_folders_end_in_one_line(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"quality_gate": 0.5}))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text("{not json")
    (tmp_path / "malformed").mkdir()
    (tmp_path / "malformed" / "results.json").write_text(json.dumps({"per_image": [{"caption": "a red circle"}]}))
    for folder in ("missing", "old", "corrupt", "malformed"):
        with pytest.raises(ValueError):
            load_gate(tmp_path / folder)
        assert main(["compare", str(tmp_path / folder), str(tmp_path / folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("attnscope: error:")


def test_missed_objects_are_split_by_whether_their_colour_was_found():
    from attnscope.eval.gate import missed_objects

    records = [{"missing": ["red cross", "blue star"], "found": ["red star", "green circle"]},
               {"missing": [], "found": ["red cross"]},
               {"missing": ["red cross"], "found": []}]
    assert missed_objects(records) == {"colour absent": {"cross": 1, "star": 1}, "other shape": {"cross": 1}}
    assert missed_objects([]) == {"colour absent": {}, "other shape": {}}


def test_drawn_instead_counts_only_detections_in_the_missed_objects_colour():
    from attnscope.eval.gate import drawn_instead

    records = [{"missing": ["red cross", "blue star"], "found": ["red star", "red cross", "green circle"]},
               {"missing": ["red cross"], "found": ["red square"]},
               {"missing": [], "found": ["red circle"]}]
    # a detection with the missed shape itself (another red cross) is not a confusion and is not counted
    assert drawn_instead(records) == {"cross": {"square": 1, "star": 1}}
    assert drawn_instead([]) == {}


def test_missed_by_size_is_the_share_of_objects_of_each_size_left_unfound():
    from attnscope.eval.gate import missed_by_size

    records = [{"sizes": ["small", "large", "small"], "missing_sizes": ["small"]},
               {"sizes": ["large"], "missing_sizes": ["large"]}]
    assert missed_by_size(records) == {"large": 0.5, "small": 0.5}
    assert missed_by_size([]) == {}
