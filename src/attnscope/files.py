"""Folders and tensor files that appear complete or not at all.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "result"
    >>> with staged_folder(target) as tmp:
    ...     _ = (tmp / "a.txt").write_text("done")
    >>> (target / "a.txt").read_text()
    'done'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(target: str | os.PathLike):
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_tensors(tensors: dict, path: str | os.PathLike) -> None:
    """Write ``tensors`` to the safetensors file ``path`` through ``path.tmp``: a run stopped while
    saving leaves no half-written file under the real name.

        save_tensors({"features": features}, run / "repa.safetensors")
    """
    from safetensors.torch import save_file

    path = Path(path)
    staged = path.with_name(path.name + ".tmp")
    save_file(tensors, str(staged))
    os.replace(staged, path)
