"""Paired comparison of two quality gates measured on the same captions (exact McNemar test).

Two models gated with the same ``--seed`` and ``--n`` see the same captions, so their difference
is judged on the images where exactly one of them passed; the images both pass or both fail say
nothing about which model is better. That test is much sharper than comparing two pass rates.

    attnscope compare docs/results/gate-unet docs/results/gate-mmdit

Example:
    >>> mcnemar_exact(0, 6)  # six discordant images, all won by the second model
    0.03125
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GateComparison:
    """Counts of images by (first passed, second passed) and the two-sided exact McNemar p-value."""

    both: int
    only_first: int
    only_second: int
    neither: int
    p_value: float

    @property
    def n(self) -> int:
        return self.both + self.only_first + self.only_second + self.neither

    @property
    def first_rate(self) -> float:
        return (self.both + self.only_first) / self.n

    @property
    def second_rate(self) -> float:
        return (self.both + self.only_second) / self.n

    def summary(self) -> str:
        return (f"{self.n} captions: first {self.first_rate:.1%}, second {self.second_rate:.1%}; "
                f"both pass {self.both}, only first {self.only_first}, only second {self.only_second}, "
                f"neither {self.neither}; exact McNemar p = {self.p_value:.3g}")


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant image is a fair coin."""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    low = min(only_first, only_second)
    tail = sum(math.comb(discordant, k) for k in range(low + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def load_gate(folder: Path) -> list[dict]:
    """The per-image records of an ``attnscope eval`` output folder (``results.json``)."""
    path = Path(folder) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"No results.json in {folder}; pass an `attnscope eval --out` folder.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}); rerun `attnscope eval`.") from None
    if "per_image" not in results:
        raise ValueError(f"{path} has no per-image records (older than this version or the real-image "
                         "protocol); rerun `attnscope eval --protocol generated`.")
    records = results["per_image"]
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"caption", "match"} <= r.keys() for r in records):
        raise ValueError(f"{path} has malformed per-image records; rerun `attnscope eval`.")
    return records


def compare_gates(first: list[dict], second: list[dict]) -> GateComparison:
    """Pair two gates' per-image records caption by caption."""
    captions = [r["caption"] for r in first]
    if captions != [r["caption"] for r in second]:
        raise ValueError("The two gates did not score the same captions; run both with the same --seed and --n.")
    if not captions:
        raise ValueError("The gates hold no images.")
    pairs = [(a["match"], b["match"]) for a, b in zip(first, second)]
    only_first = pairs.count((True, False))
    only_second = pairs.count((False, True))
    return GateComparison(both=pairs.count((True, True)), only_first=only_first,
                          only_second=only_second, neither=pairs.count((False, False)),
                          p_value=mcnemar_exact(only_first, only_second))
