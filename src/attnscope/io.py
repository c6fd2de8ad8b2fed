"""Results on disk: a folder with ``attnscope.json`` (metadata) and ``tensors.safetensors``.

No pickle anywhere. Writes go to a temporary folder beside the target that is renamed into place
at the end, so an interrupted save leaves nothing half-written. The JSON records a SHA-256 checksum
of every tensor; loading verifies them, so altered tensor bytes are refused rather than read.

This module knows the file format only; :func:`attnscope.load` (in :mod:`attnscope.methods`)
turns a folder back into the result type registered for its ``kind``.

Example:
    >>> import attnscope                          # doctest: +SKIP
    >>> heat.save("runs/cat"); again = attnscope.load("runs/cat")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .files import staged_folder

META_FILE = "attnscope.json"
TENSOR_FILE = "tensors.safetensors"
FORMAT_VERSION = 2  # 2: per-tensor checksums


class ResultFileError(ValueError):
    """A saved result is missing, corrupt or of an unknown kind."""


def save_result(path: str | os.PathLike, kind: str, meta: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``meta`` and ``tensors`` under ``path`` atomically; returns the folder."""
    from safetensors.torch import save_file

    target = Path(path)
    if target.exists() and not (target / META_FILE).exists():
        raise FileExistsError(f"{target} exists and is not an attnscope result; choose another path.")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with staged_folder(target) as staging:
        record = {"kind": kind, "format": FORMAT_VERSION, **meta,
                  "checksums": {k: tensor_checksum(v) for k, v in tensors.items()}}
        (staging / META_FILE).write_text(json.dumps(record, indent=1))
        save_file(tensors, str(staging / TENSOR_FILE))
    return target


def tensor_checksum(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes.

    >>> tensor_checksum(torch.zeros(2)) == tensor_checksum(torch.zeros(2)), tensor_checksum(torch.zeros(2)) == tensor_checksum(torch.ones(2))
    (True, False)
    """
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    version = meta.get("format", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResultFileError(f"{meta_path}: field 'format' must be an integer (got {version!r}); save the result again.")
    if version > FORMAT_VERSION:
        raise ResultFileError(f"{folder} was written by a newer attnscope (format {version}); upgrade attnscope.")
    if version >= 2:
        _verify_checksums(meta, tensors, meta_path, tensor_path)
    return meta, tensors


def _verify_checksums(meta: dict, tensors: dict, meta_path: Path, tensor_path: Path) -> None:
    sums = meta.get("checksums")
    if not isinstance(sums, dict):
        raise ResultFileError(f"{meta_path}: field 'checksums' is missing; save the result again.")
    if set(sums) != set(tensors):
        odd = sorted(set(sums) ^ set(tensors))
        raise ResultFileError(f"{tensor_path}: tensors {odd} are not both listed in 'checksums' and stored; "
                              "the files do not belong together, save the result again.")
    for name, tensor in tensors.items():
        if tensor_checksum(tensor) != sums[name]:
            raise ResultFileError(f"{tensor_path}: tensor {name!r} does not match its checksum (the file was "
                                  "altered or damaged); save the result again.")
