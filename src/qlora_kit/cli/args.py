"""Argument types of the command line: malformed values are one-line :class:`~qlora_kit.errors.UsageError`."""

from __future__ import annotations

import argparse

from qlora_kit.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line, like every input error) instead of printing
    the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        extra = message.partition("unrecognized arguments: ")[2].split()
        if any("=" in arg and not arg.startswith("-") for arg in extra):
            message += " (dotted overrides go before any --option)"
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NAME=VALUE")
    return name.strip(), value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value
