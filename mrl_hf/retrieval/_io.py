"""Atomic directory writes: build the new directory beside the target, then swap it in with renames."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable


def write_dir_atomically(path: str | os.PathLike, write: Callable[[Path], None], marker: str) -> Path:
    """Call ``write(tmp_dir)``, then replace ``path`` by ``tmp_dir``; on any failure ``path`` is untouched.

    ``marker`` is the file that identifies a directory this function may replace: an existing non-empty
    directory without it is refused rather than deleted.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is a file; save the index to a directory path.")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise FileExistsError(f"{str(path)!r} is a non-empty directory that holds no saved index ({marker} is "
                              "missing); refusing to overwrite it. Choose a new path or empty it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        os.rename(tmp, path)
        return path
    # rename(2) cannot replace a non-empty directory, so move the old one aside first.
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path
