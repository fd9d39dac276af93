"""The one rule for where a sample's image is read from, for every reader of pixels.

A sample's path is resolved against the scan's image root: the folder given (``--image-root``,
``image_root=``), else the store's folder (the folder itself for a folder of shards or a
``save_to_disk`` dataset, a file's parent folder). A path is read only when it resolves,
symlinks followed, to a regular file inside that root: ``..``, an absolute path elsewhere and a
symlink pointing out are never opened. The thumbnails of the report (:mod:`tamis.report.thumbnails`)
and the ``image_properties`` check both go through :func:`locate`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConfigError

#: images larger than this are not opened (a bound on one decode's time and memory)
MAX_IMAGE_BYTES = 64 << 20

#: what :func:`locate` says of a path: a file that may be read, or why it is not read
FOUND, NO_PATH, MISSING, OUTSIDE, NOT_A_FILE, TOO_BIG = "found", "no path", "missing", "outside", "not a file", \
    "too big"


def check_image_root(image_root: str | os.PathLike) -> Path:
    """``image_root`` resolved; a :class:`~tamis.errors.ConfigError` when it is not a folder."""
    root = Path(image_root)
    if not root.is_dir():
        raise ConfigError(f"image_root {str(root)!r} is not a folder; give the folder the samples' paths "
                          "are relative to (--image-root DIR)")
    return root.resolve()


def store_folder(source: str) -> Path | None:
    """The folder of the store read from ``source`` (resolved), or None for an in-memory store
    (``"memory"``) or a folder that is gone."""
    if source == "memory":
        return None
    src = Path(source)
    folder = src if src.is_dir() else src.parent
    return folder.resolve() if folder.is_dir() else None


def scan_image_root(source: str, image_root: str | os.PathLike | None) -> Path | None:
    """The image root of a scan of ``source``: ``image_root`` when given (it must be a folder),
    else :func:`store_folder`; None when there is neither (an in-memory store, no root given)."""
    if image_root is not None:
        return check_image_root(image_root)
    return store_folder(source)


def locate(root: Path, path: str | None, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[Path | None, str, int]:
    """``(file, status, size)``: the regular file ``path`` names relative to ``root`` (absolute
    paths as they are), resolved with symlinks followed, and its size in bytes; ``file`` is None
    unless ``status`` is :data:`FOUND`. A file outside ``root`` after resolution is
    :data:`OUTSIDE` and is never opened; one over ``max_bytes`` is :data:`TOO_BIG`. ``root`` must
    be resolved (:func:`check_image_root`)."""
    if not path or "\x00" in path:
        return None, NO_PATH, 0
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
        # a path that would leave the root is "outside" whether or not its target exists
        lexical = Path(os.path.normpath(candidate))
        return None, (MISSING if lexical.is_relative_to(root) else OUTSIDE), 0
    if not real.is_relative_to(root):
        return None, OUTSIDE, 0
    try:
        st = os.stat(real)
    except OSError:
        return None, MISSING, 0
    if not stat.S_ISREG(st.st_mode):
        return None, NOT_A_FILE, 0
    if st.st_size > max_bytes:
        return None, TOO_BIG, int(st.st_size)
    return real, FOUND, int(st.st_size)


def resolve_inside(root: Path, path: str | None, max_bytes: int = MAX_IMAGE_BYTES) -> Path | None:
    """The file ``path`` names, relative to ``root``, or None when it is not a regular file inside
    ``root`` (after following symlinks), is too big, or does not exist (:func:`locate`)."""
    return locate(root, path, max_bytes)[0]


def open_inside(real: Path):
    """A binary file object for ``real`` (a path :func:`locate` found; its ``name`` is that path),
    opened without following a symlink at its last component and checked to be a regular file: a
    file swapped for a link between the two calls is refused (``OSError``) rather than read."""
    fh = open(real, "rb", opener=_open_no_follow)
    try:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{real} is not a regular file")
    except BaseException:
        fh.close()
        raise
    return fh


def _open_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))


__all__ = ["check_image_root", "store_folder", "scan_image_root", "locate", "resolve_inside", "open_inside",
           "MAX_IMAGE_BYTES", "FOUND", "NO_PATH", "MISSING", "OUTSIDE", "NOT_A_FILE", "TOO_BIG"]
