"""The `qlora-kit` command line (:func:`main`). Each sub-command is a thin wrapper over a library function.

Errors caused by input (:class:`~qlora_kit.errors.QloraKitError`), malformed arguments included, print
one line ``error: <message>`` and exit non-zero (``exc.exit_code``), without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from qlora_kit.cli.parser import build_parser
from qlora_kit.errors import QloraKitError

__all__ = ["build_parser", "main"]


_LIGHT_COMMANDS = ("validate", "schema")  # they import no model library: leave those alone (1 s to import)


def _console(argv: Sequence[str] | None):
    """The command's terminal and log-file routing (:class:`qlora_kit.console.Console`): the library's
    own messages on stderr, other libraries' warnings and progress bars in the run's ``train.log`` (or,
    with ``-v``, on stderr too)."""
    from qlora_kit.console import Console

    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args or "--verbose" in args
    command = next((a for a in args if not a.startswith("-")), None)
    return Console(verbose=verbose, libraries=command not in (None, *_LIGHT_COMMANDS))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlora-kit` console script."""
    with _console(argv) as console:
        return _run(build_parser(), argv, console)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, console: Any) -> int:
    debug = False
    try:
        args = parser.parse_args(argv)
        debug = args.debug
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except QloraKitError as exc:
        if debug:
            raise
        console.say_hidden()  # before the error, which stays the last line
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pager or `head` that closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
