"""What a command shows on the terminal, and what goes to the run's log file (``train.log``).

The terminal gets what the user needs: the library's own messages (its phases, resumes, warnings), the
warnings raised by the user's code or the library, and any library's errors. Everything else (other
libraries' warnings and info, their progress bars, the library's debug records) goes to ``train.log`` in
the run directory, with full tracebacks. Records are held in memory until the run directory has been
checked and locked (:func:`run_log`), so nothing is written into a directory that might belong to
another run, and nothing is lost before it opens. ``-v`` shows everything on the terminal too.

:class:`Console` is the command line's session (:func:`qlora_kit.cli.main` opens one per command);
:func:`run_log` is what :func:`qlora_kit.run` calls, with or without one.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qlora_kit.files import writing
from qlora_kit.rundir.manifest import LOG_FILE

_BUFFER_LIMIT = 5000  # records held before a run directory opens (a handful in practice)
_FILE_FORMAT = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
_active: Console | None = None


def _ours(record: logging.LogRecord) -> bool:
    """A record of this library, or of the user's code (a plugin's own logger), or a warning raised by
    either (not a dependency's)."""
    if record.name.split(".")[0] == "qlora_kit" or getattr(record, "warning_from_user", False):
        return True
    return record.name != "py.warnings" and _user_code(record.pathname)


class _Terminal(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests swap it), above progress bars."""

    def __init__(self, verbose: bool):
        super().__init__(logging.DEBUG)
        self.verbose = verbose

    def wants(self, record: logging.LogRecord) -> bool:
        if _ours(record):
            return record.levelno >= logging.INFO
        return record.levelno >= (logging.WARNING if self.verbose else logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.wants(record):
            return
        try:
            from tqdm import tqdm

            tqdm.write(terminal_text(record), file=sys.stderr)  # clears and redraws an active bar
        except Exception:
            self.handleError(record)


def terminal_text(record: logging.LogRecord) -> str:
    """``message`` for information, ``warning: message`` (``warning (library): ...``) for the rest."""
    message = record.getMessage()
    if record.levelno < logging.WARNING:
        return message
    origin = "" if _ours(record) else f" ({record.name.split('.')[0]})"
    return f"{record.levelname.lower()}{origin}: {message}"


class _RunLog(logging.Handler):
    """Every record, in memory until :meth:`attach` gives it a file, then appended to that file."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(_FILE_FORMAT)
        self.buffer: list[str] = []
        self.file: Any = None
        self.path: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self.file is None:
            if len(self.buffer) < _BUFFER_LIMIT:
                self.buffer.append(text)
            return
        try:
            self.file.write(text + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk must not stop the run over its log: say so once, stop logging
            self.detach()
            sys.stderr.write(f"warning: cannot write {self.path} ({exc.strerror}); the log stops here\n")

    def attach(self, path: Path) -> None:
        """Append to ``path`` from now on, the records held so far first."""
        with writing(path):  # a log grows line by line: appended, not written atomically
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open until detach()
            self.path = path
            self.file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
            self.file.writelines(line + "\n" for line in self.buffer)
            self.file.flush()
        self.buffer = []

    def detach(self) -> None:
        """Close the file; records are held in memory again."""
        if self.file is not None:
            file, self.file = self.file, None
            file.close()


class _Counter(logging.Filter):
    """Counts the warnings the terminal does not show (named at the end of the command)."""

    def __init__(self, terminal: _Terminal):
        super().__init__()
        self.terminal, self.hidden = terminal, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not self.terminal.wants(record):
            self.hidden += 1
        return True


class Console:
    """The command line's logging for one command (a context manager that restores everything after).

    Args:
        verbose: Show other libraries' warnings and progress bars on the terminal as well.
        libraries: Route transformers' and datasets' own handlers and progress bars (commands that load
            models; importing them takes a second, so `validate` and `schema` leave them alone).
    """

    def __init__(self, verbose: bool = False, libraries: bool = True):
        self.verbose, self.libraries = verbose, libraries
        self.terminal = _Terminal(verbose)
        self.log = _RunLog()
        self.counter = _Counter(self.terminal)
        self.log.addFilter(self.counter)
        self._undo: list[Any] = []

    def __enter__(self) -> Console:
        global _active
        root, library = logging.getLogger(), logging.getLogger("qlora_kit")
        saved = (root.level, library.level, library.propagate, warnings.showwarning)
        self._undo.append(lambda: _restore(root, library, saved))
        root.setLevel(logging.INFO)  # other libraries' info goes to the log file
        library.setLevel(logging.DEBUG)
        library.propagate = True
        root.addHandler(self.terminal)
        root.addHandler(self.log)
        self._undo.append(lambda: (root.removeHandler(self.terminal), root.removeHandler(self.log)))
        warnings.showwarning = _show_warning
        if self.libraries and not self.verbose:
            self._undo.append(_quiet_libraries())
        _active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        _active = None
        self.say_hidden()
        self.log.detach()
        for undo in reversed(self._undo):
            undo()

    def say_hidden(self) -> None:
        """Say how many warnings the terminal did not show, and where they are (once; the command line
        calls it before an error message, so the error stays the last line)."""
        n, self.counter.hidden = self.counter.hidden, 0
        if n:
            what = f"{n} warning{'s' if n > 1 else ''} from other libraries"
            where = (
                f"in {self.log.path}" if self.log.path else f"hidden; -v shows {'them' if n > 1 else 'it'}"
            )
            sys.stderr.write(f"({what} {where})\n")


def _restore(root: logging.Logger, library: logging.Logger, saved: tuple[Any, ...]) -> None:
    root.level, library.level, library.propagate, warnings.showwarning = saved


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
):
    """``warnings.showwarning`` as a log record: shown when raised by the library or the user's code,
    otherwise kept for the log file with its source location."""
    from_user = _user_code(filename) or category.__module__.split(".")[0] == "qlora_kit"
    text = str(message) if from_user else warnings.formatwarning(message, category, filename, lineno, line)
    logging.getLogger("py.warnings").warning(text.rstrip(), extra={"warning_from_user": from_user})


def _user_code(filename: str) -> bool:
    """Code of this library or of the user: not inside an installed third-party package or Python itself."""
    import sysconfig

    path = Path(filename).resolve()
    if Path(__file__).resolve().parent in path.parents:
        return True
    libraries = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "purelib", "platlib")}
    return not any(lib in path.parents for lib in libraries) and "site-packages" not in path.parts


def _quiet_libraries():
    """transformers and datasets log through the root logger (so their records reach the log file) and
    show no progress bars; returns the undo."""
    import datasets.utils.logging as ds_logging
    import transformers.utils.logging as tf_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    tf_logging.disable_default_handler()
    tf_logging.enable_propagation()
    tf_logging.disable_progress_bar()
    ds_logging.disable_progress_bar()
    disable_progress_bars()

    def undo() -> None:
        tf_logging.enable_default_handler()
        tf_logging.disable_propagation()
        tf_logging.enable_progress_bar()
        ds_logging.enable_progress_bar()
        enable_progress_bars()

    return undo


@contextmanager
def run_log(output_dir: str | Path) -> Iterator[Path]:
    """Write the run's log to ``output_dir/train.log`` while inside (call it once the directory is locked).

    Under the command line's :class:`Console`, the records held since the command started come first and
    other libraries' records are included. From Python, the library's own records are logged (the
    ``qlora_kit`` logger); where logging is not configured at all, they are also shown on stderr as the
    command line shows them, and otherwise go wherever it is configured to send them. An error that ends
    the run is logged with its traceback before it propagates.
    """
    path = Path(output_dir) / LOG_FILE
    if _active is not None:
        _active.log.attach(path)
        undo = _active.log.detach
    else:
        undo = _log_from_python(path)
    try:
        yield path
    except BaseException:
        logging.getLogger("qlora_kit").debug("the run stopped with an error", exc_info=True)
        raise
    finally:
        undo()


def _log_from_python(path: Path) -> Any:
    """Handlers on the ``qlora_kit`` logger for a run started from Python; returns their undo."""
    library, root = logging.getLogger("qlora_kit"), logging.getLogger()
    with writing(path):
        file = logging.FileHandler(path, encoding="utf-8")
    file.setFormatter(_FILE_FORMAT)
    added: list[logging.Handler] = [file]
    level = library.level
    if not root.handlers and not library.handlers:  # logging never configured: show the run on stderr
        added.append(_Terminal(verbose=False))
        library.setLevel(logging.DEBUG if level == logging.NOTSET else level)
    for handler in added:
        library.addHandler(handler)

    def undo() -> None:
        for handler in added:
            library.removeHandler(handler)
        file.close()
        library.setLevel(level)

    return undo
