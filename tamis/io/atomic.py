"""Atomic file output, the only one in tamis: write to a temporary name in the same folder, then rename.

A reader never sees a half-written file, and a failed run leaves what was there before.
:func:`atomic_path` does it for one file (flushed to disk before the rename),
:func:`staged_folder` for a set of files and folders that appear together,
:func:`output_folder` checks and creates the folder a report goes into.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as written:   # on disk before the rename, so a crash leaves old or new
            os.fsync(written.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a report is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def output_folder(out: str | os.PathLike, option: str = "--out DIR") -> Path:
    """``out`` as a folder that exists (created with its parents); an error when it is a file."""
    from ..errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path is a file; give a folder ({option})")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def staged_folder(out: Path, prefix: str = ".tamis-staging-") -> Iterator[Path]:
    """A fresh folder inside ``out`` to write into, removed afterwards with whatever was not
    moved out of it (:func:`move_into_place`)."""
    stage = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    os.chmod(stage, default_dir_mode())  # mkdtemp makes 0700
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def move_into_place(new: Path, target: Path) -> None:
    """Rename file or folder ``new`` to ``target``, replacing what was there (a folder is swapped:
    the old one is renamed aside first, then removed)."""
    if not new.is_dir():
        os.replace(new, target)
        return
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (reading it means setting it: one thread at a time, or two threads could
    leave it at 0)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the process umask."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder: 0777 less the process umask."""
    return 0o777 & ~_umask()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as strict JSON (RFC 8259: no NaN or Infinity, which ``JSON.parse`` and jq refuse);
    a non-finite number is written as null."""
    text = json.dumps(finite(data), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_text(path, text + "\n")


def finite(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf; NumPy's too) replaced by None, recursively."""
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    if isinstance(data, (float, np.floating)):
        return float(data) if math.isfinite(data) else None
    return data


def write_parquet(path: str | os.PathLike, table: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
