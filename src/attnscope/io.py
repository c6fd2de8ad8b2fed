"""Results on disk: a folder with ``attnscope.json`` (metadata) and ``tensors.safetensors``.

No pickle anywhere. Writes go to a temporary folder beside the target that is renamed into place
at the end, so an interrupted save leaves nothing half-written.

This module knows the file format only; :func:`attnscope.load` (in :mod:`attnscope.methods`)
turns a folder back into the result type registered for its ``kind``.

Example:
    >>> import attnscope                          # doctest: +SKIP
    >>> heat.save("runs/cat"); again = attnscope.load("runs/cat")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import staged_folder

META_FILE = "attnscope.json"
TENSOR_FILE = "tensors.safetensors"
FORMAT_VERSION = 1


class ResultFileError(ValueError):
    """A saved result is missing, corrupt or of an unknown kind."""


def save_result(path: str | os.PathLike, kind: str, meta: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``meta`` and ``tensors`` under ``path`` atomically; returns the folder."""
    from safetensors.torch import save_file

    target = Path(path)
    if target.exists() and not (target / META_FILE).exists():
        raise FileExistsError(f"{target} exists and is not an attnscope result; choose another path.")
    with staged_folder(target) as staging:
        record = {"kind": kind, "format": FORMAT_VERSION, **meta}
        (staging / META_FILE).write_text(json.dumps(record, indent=1))
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(staging / TENSOR_FILE))
    return target


def read_result(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_result`; raises :class:`ResultFileError` with a fix."""
    from safetensors.torch import load_file

    folder = Path(path)
    meta_path, tensor_path = folder / META_FILE, folder / TENSOR_FILE
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ResultFileError(f"{folder} is not an attnscope result (needs {META_FILE} and {TENSOR_FILE}).")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{meta_path} is corrupt ({err}); save the result again.") from None
    try:
        tensors = load_file(str(tensor_path))
    except Exception as err:  # safetensors raises several types for damaged files
        raise ResultFileError(f"{tensor_path} is corrupt ({err}); save the result again.") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ResultFileError(f"{meta_path} has no 'kind'; it was not written by attnscope.")
    if meta.get("format", 0) > FORMAT_VERSION:
        raise ResultFileError(f"{folder} was written by a newer attnscope (format {meta['format']}); upgrade attnscope.")
    return meta, tensors
