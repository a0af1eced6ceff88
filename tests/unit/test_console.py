"""What reaches the terminal and what the run log keeps (qlora_kit.console), phase lines, progress lines."""

from __future__ import annotations

import io
import logging
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest

from qlora_kit.console import Console, run_log
from qlora_kit.phases import duration, phase
from qlora_kit.training.progress import Eta, TrainProgress, interactive

LIBRARY_FILE = str(Path(sysconfig.get_paths()["purelib"]) / "somelib" / "mod.py")


class Records(logging.Handler):
    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.level, self.logger.propagate = self.saved


def _library_log(name: str, level: int, message: str) -> None:
    """A record as a library installed in site-packages logs it (its source file decides what is shown)."""
    logger = logging.getLogger(name)
    logger.handle(logger.makeRecord(name, level, LIBRARY_FILE, 12, message, (), None))


def _noise():
    """A library's warning record, a library's Python warning, an error of a library, and our own lines."""
    _library_log("somelib.backend", logging.WARNING, "kernel not found, using the slow path")
    warnings.warn_explicit("`old_api` is deprecated", FutureWarning, LIBRARY_FILE, 12)
    _library_log("somelib", logging.ERROR, "the library failed at something")
    logging.getLogger("qlora_kit.recipe").info("data: 30 rows")
    logging.getLogger("qlora_kit.recipe").debug("a detail for the log file")


def test_terminal_shows_our_messages_and_library_errors_the_log_file_everything(capsys, tmp_path):
    with Console(libraries=False) as console:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            _noise()
        with run_log(tmp_path) as path:  # the records held so far are written when the directory opens
            logging.getLogger("qlora_kit.training").warning("memory: the first step used more than planned")
        assert console.log.file is None  # closed with the run
    shown = capsys.readouterr().err
    assert "data: 30 rows" in shown
    assert "warning: memory: the first step used more than planned" in shown
    assert "error (somelib): the library failed at something" in shown
    for hidden in ("kernel not found", "old_api", "a detail for the log file"):
        assert hidden not in shown
    assert f"(2 warnings from other libraries in {path})" in shown
    log = path.read_text()
    for line in ("kernel not found, using the slow path", "FutureWarning: `old_api` is deprecated", "somelib/mod.py:12",
                 "data: 30 rows", "a detail for the log file", "memory: the first step"):  # fmt: skip
        assert line in log


def test_verbose_shows_library_warnings_too(capsys):
    with Console(verbose=True, libraries=False), warnings.catch_warnings():
        warnings.simplefilter("always")
        _noise()
    shown = capsys.readouterr().err
    assert "warning (somelib): kernel not found" in shown and "old_api" in shown
    assert "hidden" not in shown


def test_without_a_run_directory_the_hidden_warnings_are_counted(capsys):
    with Console(libraries=False), warnings.catch_warnings():
        warnings.simplefilter("always")
        _noise()
    assert (
        capsys.readouterr().err.rstrip().endswith("(2 warnings from other libraries hidden; -v shows them)")
    )


def test_warnings_of_the_library_and_of_user_code_are_shown(capsys):
    from qlora_kit.export import MergeVerificationWarning

    with Console(libraries=False), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("MERGE VERIFICATION FAILED: ...", MergeVerificationWarning, stacklevel=1)
        warnings.warn("a warning in the user's own script", UserWarning, stacklevel=1)
    shown = capsys.readouterr().err
    assert "warning: MERGE VERIFICATION FAILED" in shown
    assert "warning: a warning in the user's own script" in shown


def test_console_restores_logging_and_warnings():
    root, library = logging.getLogger(), logging.getLogger("qlora_kit")
    before = (list(root.handlers), root.level, library.level, library.propagate, warnings.showwarning)
    with Console(libraries=True):
        pass
    assert (list(root.handlers), root.level, library.level, library.propagate, warnings.showwarning) == before


def test_run_log_from_python_keeps_the_library_records_and_the_error(tmp_path):
    library = logging.getLogger("qlora_kit")
    saved = library.level
    library.setLevel(logging.DEBUG)
    try:
        with pytest.raises(RuntimeError), run_log(tmp_path) as path:
            logging.getLogger("qlora_kit.recipe").info("train: 3 steps ...")
            raise RuntimeError("out of patience")
    finally:
        library.setLevel(saved)
    log = path.read_text()
    assert "train: 3 steps" in log and "RuntimeError: out of patience" in log and "Traceback" in log


def test_phase_lines_say_what_runs_and_how_long_it_took():
    with Records("qlora_kit.phases") as records:
        with phase("export", "merged") as p:
            p.result = "runs/x/adapter, runs/x/merged"
        with pytest.raises(ValueError), phase("verify", "comparing logits"):
            raise ValueError("boom")
    assert records.lines[0] == "export: merged ..."
    assert records.lines[1].startswith("export: runs/x/adapter, runs/x/merged  [") and records.lines[
        1
    ].endswith(" s]")
    assert records.lines[2] == "verify: comparing logits ..."
    assert records.lines[3].startswith("verify: stopped after ")


def test_duration_reads_well():
    assert (duration(0.42), duration(59.94), duration(125), duration(3725)) == (
        "0.4 s",
        "59.9 s",
        "2:05",
        "1:02:05",
    )


def test_eta_leaves_the_warm_up_out():
    eta = Eta(total=100, start_step=0, warmup=2)
    eta.update(1, now=60.0)  # the first step took a minute (compilation, warm-up)
    assert eta.seconds_left(1, now=60.0) is None
    eta.update(2, now=61.0)
    assert eta.seconds_left(2, now=61.0) is None  # no step timed after the warm-up yet
    eta.update(4, now=63.0)
    assert eta.seconds_left(4, now=63.0) == pytest.approx(96.0)  # 1 s a step, not 21 s


def test_plain_lines_show_the_loss_from_the_first_step():
    progress = TrainProgress(total=20, start_step=0, log_every=10, bar=False)
    with Records("qlora_kit.training.progress") as records:
        progress.advance(5.25)
        for _ in range(9):
            progress.advance(4.0)
        progress.logged({"step": 10, "loss": 4.125, "lr": 1e-4, "tokens_per_s": 1234.0})
        progress.evaluated({"step": 10, "eval_loss": 3.5, "eval_perplexity": 33.1})
    assert records.lines[0].startswith("train: step 1/20 (5%)  loss 5.2500  eta ?  elapsed ")
    assert records.lines[1].startswith("train: step 10/20 (50%)  loss 4.1250  lr 1.00e-04  1,234 tok/s  eta ")
    assert records.lines[2] == "eval: step 10  loss 3.5000  perplexity 33.1"
    assert len(records.lines) == 3  # nothing between the log steps


def test_the_bar_shows_the_loss_of_the_first_step(capsys):
    progress = TrainProgress(total=20, start_step=0, log_every=10, bar=True)
    progress.advance(5.25)
    assert "loss 5.2500" in progress.bar.postfix and "eta ?" in progress.bar.postfix
    progress.close()


def test_a_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert interactive(Tty()) or "ipykernel" in sys.modules
    assert not interactive(io.StringIO()) or "ipykernel" in sys.modules


def test_run_log_from_python_without_logging_configured_shows_the_run_on_stderr(tmp_path, capsys):
    root, library = logging.getLogger(), logging.getLogger("qlora_kit")
    saved = (root.handlers[:], library.level)
    root.handlers[:] = []  # as in a script that never configured logging (pytest adds its own handlers)
    try:
        with run_log(tmp_path) as path, phase("data", "rows.json"):
            logging.getLogger("qlora_kit.training").debug("a detail")
        assert library.handlers == [] and library.level == saved[1]
    finally:
        root.handlers[:] = saved[0]
    err = capsys.readouterr().err
    assert err.startswith("data: rows.json ...\ndata: done  [") and "a detail" not in err
    assert "a detail" in path.read_text() and "data: rows.json ..." in path.read_text()


def test_phase_lines_reach_stderr_when_logging_is_not_configured(capsys):
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []
    try:
        with phase("export", "adapter"):
            pass
    finally:
        root.handlers[:] = saved
    assert capsys.readouterr().err.startswith("export: adapter ...\nexport: done  [")


def test_a_plugin_modules_own_log_records_are_shown(capsys):
    """A user's plugin logs under its own module name: its records are the user's, so they are shown."""
    with Console(libraries=False):
        logging.getLogger("my_plugin.loss").warning("my plugin says hello")
    assert "my plugin says hello" in capsys.readouterr().err
