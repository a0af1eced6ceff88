"""Catalogue: a few cases through a real `python -m qlora_kit.cli` process, to prove that no traceback
escapes to the terminal (the in-process cases cannot see what the interpreter itself would print)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qlora_kit.errors import QloraKitError, UsageError


def _run(world, argv, **env) -> tuple[int, str, float]:
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    environ.update(PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", **env)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "qlora_kit.cli", *world.fmt(argv)],
        env=environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.mark.parametrize(
    ("argv", "expect", "code"),
    [
        (["generate", "{empty}", "--prompt", "hi", "--field", "foo"], ["--field", "NAME=VALUE"], UsageError.exit_code),
        (["data", "{base}", "data.source.path={latin1_jsonl}"], ["not valid UTF-8 at line 3"], QloraKitError.exit_code),
        (["inspect", "{base}", "model.name_or_path={llama_nan}"], ["holds NaN or infinite values"], 2),
    ],
    ids=["cli-argument", "non-utf8-data", "nan-weights"],
)  # fmt: skip
def test_subprocess_case(world, clear_error, argv, expect, code):
    rc, err, _ = _run(world, argv)
    assert rc == code
    clear_error(rc, err, expect)


def test_a_hub_id_that_cannot_be_downloaded_fails_fast(world, clear_error, closed_port):
    """Without HF_HUB_OFFLINE, an uncached hub id on an unreachable hub took 49 s of retries (five per
    file, with back-off) and ended in a 40-line traceback; now one probe, one line."""
    hub = f"http://127.0.0.1:{closed_port}"
    rc, err, seconds = _run(
        world, ["inspect", "{base}", "model.name_or_path=org/not-cached"], HF_ENDPOINT=hub
    )
    clear_error(rc, err, ["org/not-cached", "cannot be reached", "HF_HUB_OFFLINE=1"])
    assert seconds < 30, f"took {seconds:.1f} s"
