"""Catalogue: `qlora-kit train` (output directory, checkpoints and resume, optimisation, trackers).

Every case runs the real command and checks its one-line message (no traceback, exit code 2).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _read_only_dir(world) -> str:
    if os.geteuid() == 0:  # root writes through file modes; /sys refuses even root
        return "/sys/qlora-kit-catalogue"
    path = world.root / "read-only"
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    return str(path / "run")


@pytest.fixture(scope="module")
def trained_run(world):
    """A 2-step run of the base config with a checkpoint at each step."""
    from qlora_kit.cli import main

    out = world.root / "trained"
    library = logging.getLogger("qlora_kit")
    saved = (list(library.handlers), library.level, library.propagate)
    try:  # as in conftest.fresh_library_logging, which does not wrap module fixtures
        assert main(["train", world.paths["base"], f"output_dir={out}", "train.save_every=1"]) == 0
    finally:
        library.handlers[:], library.level, library.propagate = saved
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    return out


def _copy_run(trained_run: Path, name: str) -> Path:
    """A copy of the trained run without its last checkpoint (so a resume starts from checkpoint-1)."""
    copy = trained_run.parent / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(trained_run, copy)
    shutil.rmtree(copy / "checkpoint-2")
    return copy


def _train(world, out, *overrides) -> list[str]:
    return ["train", world.paths["base"], f"output_dir={out}", *overrides]


# ----------------------------------------------------------------------------------- work today


def test_resume_from_a_folder_that_is_no_checkpoint(world, expect_error):
    expect_error(
        _train(world, world.root / "runs" / "r1", f"train.resume={world.root}/nope"),
        ["train.resume", "nope is not a checkpoint folder"],
    )


def test_resume_with_a_changed_training_config(world, trained_run, expect_error):
    run = _copy_run(trained_run, "changed")
    expect_error(_train(world, run, "train.resume=auto", "train.seed=7"), [str(run), "seed: 42 -> 7"])


def test_a_torn_metrics_line_is_dropped_on_resume(world, trained_run, run_cli, log_records):
    run = _copy_run(trained_run, "torn")
    metrics = run / "metrics.jsonl"
    metrics.write_text(
        metrics.read_text().splitlines()[0] + '\n{"step": 2, "loss": 5.9, "lr'
    )  # killed writer
    with log_records("qlora_kit.training.tracking") as logs:
        rc, err = run_cli(_train(world, run, "train.resume=auto", "train.save_every=1"))
    assert rc == 0, err
    assert any("metrics.jsonl line 2: not a complete JSON record" in m for m in logs.messages())
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


# --------------------------------------------------------------------------- need the trainer


def test_output_dir_is_a_file(world, expect_error):
    expect_error(_train(world, world.paths["file"]), ["output_dir", "a_file.txt", "not a directory"])


def test_output_dir_not_writable(world, expect_error):
    target = _read_only_dir(world)
    expect_error(_train(world, target), ["output_dir", target])


def test_truncated_checkpoint_file(world, trained_run, expect_error):
    run = _copy_run(trained_run, "truncated-checkpoint")
    for weights in (run / "checkpoint-1").rglob("*.safetensors"):  # whatever the layout stores
        weights.write_bytes(weights.read_bytes()[:100])
    expect_error(_train(world, run, "train.resume=auto"), ["checkpoint-1", ".safetensors", "truncated"])


def test_corrupt_rng_state(world, trained_run, expect_error):
    run = _copy_run(trained_run, "corrupt-rng")
    states = [p for p in (run / "checkpoint-1").iterdir() if "rng" in p.name or "random" in p.name]
    assert states, "no RNG state file in the checkpoint"
    states[0].write_bytes(b"garbage")
    expect_error(_train(world, run, "train.resume=auto"), ["checkpoint-1", states[0].name])


def test_infinite_learning_rate(world, expect_error):
    expect_error(
        _train(world, world.root / "runs" / "lr-inf", "train.optimizer.lr=.inf"), ["train.optimizer.lr"]
    )


def test_huge_learning_rate(world, expect_error):
    expect_error(
        _train(
            world,
            world.root / "runs" / "lr-1e4",
            "train.optimizer.lr=1e4",
            "train.max_steps=12",
            "quant.kind=bnb_4bit",
            "quant.compute_dtype=float32",
            "adapter.target_modules=all-linear",
        ),
        ["gradients have been exactly zero", "train.optimizer.lr"],
    )


def test_eval_every_without_eval_data(world, expect_error):
    expect_error(
        _train(world, world.root / "runs" / "eval", "train.eval_every=1"), ["train.eval_every", "data.eval"]
    )


def test_max_length_beyond_the_position_table(world, expect_error):
    expect_error(
        _train(world, world.root / "runs" / "pos", f"model.name_or_path={world.paths['gpt2_64']}",
               "data.max_length=256", "data.padding=max_length", "adapter.target_modules=[c_attn]"),
        ["data.max_length", "64 positions"],
    )  # fmt: skip


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_tracker_not_installed(world, expect_error, tracker, request):
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[tracker]():
        pytest.skip(f"{tracker} is installed here")
    expect_error(
        _train(world, world.root / "runs" / tracker, f"train.trackers=[{tracker}]"),
        ["train.trackers", f"pip install 'qlora_kit[{tracker}]'"],
    )


@pytest.mark.slow
def test_second_process_on_the_same_output_dir(world, expect_error):
    out = world.root / "runs" / "shared"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen(
        [sys.executable, "-m", "qlora_kit.cli", *_train(world, out, "train.max_steps=2000")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the first run is training once it logs
        expect_error(_train(world, out), ["shared", "in use"])
    finally:
        first.kill()
        first.wait()
