"""Writing files so that a crash, a full disk or a second process never leaves a half-written one.

Every file the library writes into a run directory goes through here: a temporary file (or directory)
beside the target, fsynced, then renamed over it. A failure removes the temporary and raises
:class:`~qlora_kit.errors.StorageError` naming the target; the previous version stays intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlora_kit.errors import storage_error

# Files and directories written here are readable by others like any file the user creates (mkstemp and
# mkdtemp would give 0600 / 0700); the process umask still applies.
_FILE_MODE = 0o666
_DIR_MODE = 0o777


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root``."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`: temporary file, fsync, rename).

    Raises:
        StorageError: the file could not be written (disk full, permissions); ``path`` is unchanged.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``target`` for a writer that wants a path (too large to hold in
    memory as bytes, e.g. a GGUF file); on success it is fsynced and renamed over ``target``, on failure
    removed. An OSError becomes a :class:`~qlora_kit.errors.StorageError` naming ``target``."""
    target = Path(target)
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE & ~_umask())
        os.replace(tmp, target)
        tmp = None
        fsync_dir(target.parent)
    except OSError as exc:
        raise storage_error(exc, target) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target`` that replaces ``target`` on success.

    Why: a crash or an exception while saving (disk full, a failed merge) must never leave a
    half-written adapter or model that a later ``from_pretrained`` would half-load. On success the
    files are fsynced, the old ``target`` (if any) is swapped out and deleted; on failure the temporary
    one is removed and an OSError becomes a :class:`~qlora_kit.errors.StorageError` naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        os.chmod(tmp, _DIR_MODE & ~_umask())
    except OSError as exc:
        raise storage_error(exc, target) from exc
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, target)
    except OSError as exc:
        raise storage_error(exc, target) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename directory ``src`` to ``dst``; an existing ``dst`` is moved aside first, then deleted."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / dst.name)
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised inside into a :class:`~qlora_kit.errors.StorageError` naming ``path``
    (for writes that cannot be atomic, e.g. appending a line to a log)."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, path) from exc
