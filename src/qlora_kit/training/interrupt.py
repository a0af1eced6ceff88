"""SIGINT / SIGTERM during training: finish the step, save a checkpoint, then stop.

The first signal only sets a flag that the loop reads between optimizer steps; the handlers are then
put back, so a second signal interrupts at once (Ctrl-C twice is still an emergency stop).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the first SIGINT/SIGTERM while :meth:`installed`."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """A signal arrived."""
        return self.signal_name is not None

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Catch SIGINT/SIGTERM inside (only in the main thread, where Python delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.getsignal(s) for s in _SIGNALS}
        for sig in _SIGNALS:
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            self._restore()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s: saving a checkpoint after this step, then stopping (again to stop at once)",
                       self.signal_name)  # fmt: skip
        self._restore()  # a second signal takes the default action: stop now

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
