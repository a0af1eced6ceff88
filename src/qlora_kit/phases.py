"""The phases of a run (data, model, train, export, merge verification), each announced when it starts
and closed with its result and wall time, so a user knows what the program is doing at every moment::

    data: rows.json, alpaca formatter ...
    data: 30 rows: 24 train, 6 eval; 3,354 tokens, 278 trained  [0.1 s]

The lines are ``logging`` records of ``qlora_kit.phases`` (INFO): the command line shows them on the
terminal and keeps them in ``train.log``; from Python they go where logging is configured to send them, or,
when it is not configured at all, to stderr (as a progress bar would).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class Phase:
    """A running phase; set :attr:`result` to say what it produced (default ``done``)."""

    def __init__(self, name: str):
        self.name = name
        self.result = "done"
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Wall time since the phase started."""
        return time.perf_counter() - self.started

    def end(self, result: str | None = None) -> None:
        """Log ``name: result  [time]``."""
        say(logger, f"{self.name}: {result or self.result}  [{duration(self.seconds)}]")


def start_phase(name: str, detail: str = "") -> Phase:
    """Log ``name: detail ...`` and return the phase; call :meth:`Phase.end` when it is done."""
    say(logger, f"{name}: {detail or 'starting'} ...")
    return Phase(name)


@contextmanager
def phase(name: str, detail: str = "") -> Iterator[Phase]:
    """Log ``name: detail ...`` now and ``name: result  [time]`` when the block ends (or that it failed)."""
    current = start_phase(name, detail)
    try:
        yield current
    except BaseException:
        say(logger, f"{name}: stopped after {duration(current.seconds)}")
        raise
    current.end()


def say(log: logging.Logger, message: str) -> None:
    """``message`` as an INFO record of ``log``, or on stderr when logging is not configured at all (a
    script that never set it up still sees what the run is doing)."""
    if log.hasHandlers():
        log.info(message)
    else:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)  # above a progress bar, if one is drawn


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``2:05`` (minutes), ``1:02:05`` (hours)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
