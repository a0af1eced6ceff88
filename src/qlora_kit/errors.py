"""Exceptions the library raises for bad input: one clear message naming the field, row or file.

The CLI prints these without a traceback (unless ``--debug``) and exits non-zero; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class QloraKitError(Exception):
    """Base of every error caused by the user's input or environment rather than a library bug."""


class ConfigError(QloraKitError):
    """The configuration is invalid. ``errors`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "config"):
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


class ModelLoadError(QloraKitError):
    """A model or tokenizer could not be loaded (missing path, corrupt file, unsupported device)."""


class DataError(QloraKitError):
    """The data cannot be loaded or cannot train anything (names the file, row and field)."""


class TrainingError(QloraKitError):
    """Training cannot go on (non-finite loss, out of memory, a checkpoint that does not match)."""
