"""The measurement scripts behind the docs run end to end at smoke scale (their numbers are in
docs/results; this only keeps the scripts from rotting)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name: str, *args: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_hrv_heads_smoke(tmp_path):
    run_script("hrv_heads.py", "--out", str(tmp_path), "--prompts", "4", "--scenes", "2", "--sink-scenes", "2",
               "--gate", "2", "--steps", "2", "--threads", "1")
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["stability"]) == {"colour", "shape", "size", "relation"}
    assert report["sinks"]["max_total_deviation"] < 1e-4  # every key kept: a pixel's attention sums to 1
    assert (tmp_path / "hrv.png").is_file() and set(report["strengthening_gate"]) == {
        "plain", "colour words strengthened", "shape words strengthened"}


@pytest.mark.skipif(not (BENCHMARKS.parent / "src/attnscope/weights/shapes-mmdit/model_index.json").is_file(),
                    reason="this build ships no MM-DiT")
def test_concept_diagnostics_smoke(tmp_path):
    run_script("concept_diagnostics.py", "--out", str(tmp_path), "--scenes", "2", "--batch", "2")
    report = json.loads((tmp_path / "results.json").read_text())
    assert {r["words"] for r in report["lone_words"]} == {"shape", "color"}
    assert all(0.0 <= r["mIoU"] <= 1.0 for r in report["selections"])
