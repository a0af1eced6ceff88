"""Exceptions the library raises for bad input: one clear message naming the field, row or file.

There is one error type per cause, raised at the boundary where the input is read (a config, a data
file, a model directory, a checkpoint, an output directory, a command-line argument). The CLI prints
these as one line (or a short block for several config errors) without a traceback (unless
``--debug``) and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class QloraKitError(Exception):
    """Base of every error caused by the user's input or environment rather than a library bug."""

    exit_code = 2


class ConfigError(QloraKitError):
    """The configuration is invalid. ``errors`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "config"):
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


class UsageError(QloraKitError):
    """A command-line argument is malformed (names the option and the expected form)."""


class ModelLoadError(QloraKitError):
    """A model or tokenizer could not be loaded (missing path, corrupt file, unsupported device)."""


class DataError(QloraKitError):
    """The data cannot be loaded or cannot train anything (names the file, row and field)."""


class TrainingError(QloraKitError):
    """Training cannot go on (non-finite loss, out of memory, a checkpoint that does not match)."""


class CheckpointError(TrainingError):
    """A checkpoint or exported adapter is incomplete or corrupt (names the file and how to recover)."""


class ExportError(QloraKitError):
    """A model cannot be exported in the asked format (e.g. an architecture or tokenizer GGUF export
    does not support); names what is unsupported and what is."""


class OutputDirError(QloraKitError):
    """The output directory cannot hold this run: not a directory, not writable, locked by another
    process, or holding a different run."""


class StorageError(QloraKitError):
    """Writing a file failed (disk full, permission denied, read-only file system); names the file.

    Files are written atomically, so the previous version of the file (if any) is still intact.
    """


class InterruptedRun(QloraKitError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (message says how to resume)."""

    exit_code = 130


_STORAGE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def storage_error(exc: OSError, path: str | Path | None = None, what: str = "writing") -> StorageError:
    """A :class:`StorageError` for ``exc`` raised while ``what`` ``path``: the file and the reason."""
    target = path if path is not None else (exc.filename or "a file")
    reason = _STORAGE_REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    hint = " Free some space and run the command again." if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return StorageError(f"{what} {target} failed: {reason}.{hint}")


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, for one-line errors (libraries append paragraphs of advice)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
