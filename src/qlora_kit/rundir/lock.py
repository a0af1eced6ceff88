"""An exclusive lock on a run directory, so two runs never write into one directory.

``fcntl.flock`` on ``output_dir/.qlora_kit.lock``: the operating system releases it when its process
dies, however it dies, so a lock left by a killed run is never mistaken for a live one; the file keeps
who held it last, for the messages. (Some network file systems do not support flock; the lock is then
advisory only.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from qlora_kit.errors import OutputDirError
from qlora_kit.rundir.manifest import LOCK_FILE

logger = logging.getLogger(__name__)


class RunLock:
    """Holds ``directory``'s lock from :meth:`acquire` until :meth:`release` (or process exit)."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`OutputDirError` naming the process that holds it."""
        import fcntl

        previous = self.holder()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            who = _describe(previous) if previous else "another process"
            raise OutputDirError(
                f"{self.path.parent} is in use by {who}: one run per output directory. Wait for it to "
                "finish, or choose another output_dir"
            ) from None
        if previous and previous.get("pid") != os.getpid():
            logger.info("took over the lock of %s, which is no longer running", _describe(previous))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> dict[str, Any] | None:
        """Who wrote the lock file last (it may have exited since)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: {holder.get('command')})"
