"""The `qlora-kit` command line (:func:`main`). Each sub-command is a thin wrapper over a library function.

Errors caused by input (:class:`~qlora_kit.errors.QloraKitError`), malformed arguments included, print
one line ``error: <message>`` and exit non-zero (``exc.exit_code``), without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from qlora_kit.cli.parser import build_parser
from qlora_kit.errors import QloraKitError

__all__ = ["build_parser", "main"]


def _setup_logging() -> None:
    """The library's own messages (a run resumed, a lock taken over, a schedule changed) on stderr."""
    import logging

    class _Stderr(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is when a record is emitted (tests swap it)."""

        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

        @stream.setter
        def stream(self, value):  # StreamHandler.__init__ assigns it
            pass

    library = logging.getLogger("qlora_kit")
    if not library.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
        library.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlora-kit` console script."""
    parser = build_parser()
    debug = False
    _setup_logging()
    try:
        args = parser.parse_args(argv)
        debug = args.debug
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except QloraKitError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pager or `head` that closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
