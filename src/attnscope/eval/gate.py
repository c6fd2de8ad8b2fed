"""Quality-gate statistics of a generated-protocol run, from its per-image records.

Each record says which captioned objects the detector found (``found``), which it missed
(``missing``, as "colour shape") and the objects' drawn sizes.

Example:
    >>> pass_rates([{"match": True, "n_objects": 1}, {"match": False, "n_objects": 2}], lambda r: [r["n_objects"]])
    {'1': 1.0, '2': 0.0}
"""

from __future__ import annotations

from collections import Counter


def pass_rates(records: list, groups_of) -> dict:
    """Share of passing images in each group; ``groups_of(record)`` lists the groups a record is in
    (its object count; every shape its caption names)."""
    groups: dict = {}
    for record in records:
        for key in groups_of(record):
            groups.setdefault(key, []).append(record["match"])
    return {str(key): round(sum(passed) / len(passed), 4) for key, passed in sorted(groups.items())}


def missed_objects(records: list) -> dict:
    """Why captioned objects went unfound, counted per object and by its shape: ``colour absent`` (no
    detection has its colour) or ``other shape`` (some detection has its colour — possibly one matched
    to another object of that colour — but none with its colour and shape).

        missed_objects([{"missing": ["red cross"], "found": ["red star"]}])
        # {'colour absent': {}, 'other shape': {'cross': 1}}
    """
    kinds: dict = {"colour absent": {}, "other shape": {}}
    for record in records:
        colours = {item.split()[0] for item in record["found"]}
        for item in record["missing"]:
            colour, shape = item.split()
            counts = kinds["other shape" if colour in colours else "colour absent"]
            counts[shape] = counts.get(shape, 0) + 1
    return {kind: dict(sorted(counts.items())) for kind, counts in kinds.items()}


def drawn_instead(records: list) -> dict:
    """For each captioned object found in its colour but not its shape, the shapes the detector saw in
    that colour, counted as ``{captioned shape: {detected shape: count}}`` (a confusion table of the misses).

        drawn_instead([{"missing": ["red cross"], "found": ["red star", "blue circle"]}])
        # {'cross': {'star': 1}}
    """
    table: dict = {}
    for record in records:
        for item in record["missing"]:
            colour, shape = item.split()
            for detected in record["found"]:
                found_colour, found_shape = detected.split()
                if found_colour == colour and found_shape != shape:
                    row = table.setdefault(shape, {})
                    row[found_shape] = row.get(found_shape, 0) + 1
    return {shape: dict(sorted(row.items())) for shape, row in sorted(table.items())}


def missed_by_size(records: list) -> dict:
    """Share of captioned objects the detector did not find, by the object's drawn size (whether or not
    the caption says it): tells whether misses are a matter of resolution.

        missed_by_size([{"sizes": ["small", "large"], "missing_sizes": ["small"]}])
        # {'large': 0.0, 'small': 1.0}
    """
    total = Counter(size for record in records for size in record["sizes"])
    missed = Counter(size for record in records for size in record["missing_sizes"])
    return {str(size): round(missed[size] / total[size], 4) for size in sorted(total, key=str)}
