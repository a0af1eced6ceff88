"""Runs that can be trusted, tried through the real command line in subprocesses: the same config gives
the same adapter, two processes give what one gives, a run killed at any moment resumes to the same
bytes, SIGINT saves and says how to go on, one run per directory, and nothing from a run directory runs
code or is unpickled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qlora_kit.testing import make_alpaca_rows

ADAPTER = Path("adapter") / "adapter_model.safetensors"


SLOW_PLUGIN = """
import time
from qlora_kit.registry import callbacks
from qlora_kit.strict import StrictModel
from qlora_kit.training import Callback


@callbacks.register("slow")
class Slow(Callback):
    \"\"\"Sleeps after every step, so that signals land mid-run.\"\"\"

    class Options(StrictModel):
        seconds: float = 0.4

    def __init__(self, config):
        self.seconds = config.seconds

    def on_step_end(self, state, metrics):
        time.sleep(self.seconds)
"""


def _env(plugins: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if plugins is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugins), env.get("PYTHONPATH", "")])
    return env


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "qlora_kit.cli", *map(str, args)]
    plugins = next((Path(a).parent for a in args if str(a).endswith(".yaml")), None)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(plugins))


def _popen(cfg: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qlora_kit.cli", "train", str(cfg)], env=_env(cfg.parent),
                            text=True, **kwargs)  # fmt: skip


def _config(tmp_path: Path, model_dir: Path, out: str, slow: float = 0.0, **train) -> Path:
    rows = tmp_path / "rows.jsonl"
    if not rows.exists():
        rows.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_rows(48, seed=3)))
        (tmp_path / "slow_plugin.py").write_text(SLOW_PLUGIN)
    if slow:  # a registered callback kind from a plugin module: no effect on the numbers
        train["callbacks"] = [{"kind": "slow", "seconds": slow}]
    config = {
        "plugins": ["slow_plugin"] if slow else [],
        "output_dir": str(tmp_path / out),
        "model": {"name_or_path": str(model_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"source": {"path": str(rows)}, "max_length": 256},
        "train": {"max_steps": 6, "micro_batch_size": 4, "optimizer": {"lr": 1e-3}, "seed": 3,
                  "save_every": 1, "log_every": 1, **train},
        "export": {"kind": "adapter"},
    }  # fmt: skip
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _bytes(run: Path) -> bytes:
    return (run / ADAPTER).read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama_dir):
    """One uninterrupted CLI run: its directory and config maker."""
    tmp = tmp_path_factory.mktemp("reliability")
    done = _cli("train", _config(tmp, tiny_llama_dir, "reference"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


def test_two_cli_runs_of_one_config_are_bit_identical(reference, tiny_llama_dir):
    again = _cli("train", _config(reference, tiny_llama_dir, "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _bytes(reference / "again") == _bytes(reference / "reference")  # adapter init, dropout, order


def test_killed_at_random_moments_then_resumed_ends_bit_identical(reference, tiny_llama_dir):
    """SIGKILL mid-step at random moments and inside checkpoint writes, then `resume: auto`, until the run
    finishes: the adapter and every logged step equal the uninterrupted run's."""
    cfg = _config(reference, tiny_llama_dir, "killed", slow=0.3, resume="auto")
    out = reference / "killed"
    rng, kills, in_save = random.Random(7), 0, 0
    for trial in range(16):
        process = _popen(cfg, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        during_save = trial % 2 == 1
        if _wait_for_progress(out, process, during_save):
            time.sleep(0 if during_save else rng.uniform(0.0, 0.6))
            process.kill()
            kills, in_save = kills + 1, in_save + during_save
        process.wait()
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, process.stderr.read()[-3000:]
    else:
        pytest.fail("the run never finished")
    assert kills >= 4 and in_save >= 2
    assert _bytes(out) == _bytes(reference / "reference")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) == list(range(1, 7))  # every step logged once
    assert not list(out.glob(".checkpoint-*"))  # no half-written checkpoint left behind


def _wait_for_progress(out: Path, process: subprocess.Popen, in_save: bool) -> bool:
    """Wait until this process trains (a new metrics line) or, with ``in_save``, writes a checkpoint;
    False if it finished first."""
    metrics = out / "metrics.jsonl"
    start = metrics.read_text().count("\n") if metrics.is_file() else 0
    while process.poll() is None:
        if in_save and list(out.glob(".checkpoint-*.tmp")):
            return True
        if not in_save and metrics.is_file() and metrics.read_text().count("\n") > start:
            return True
        time.sleep(0.005)
    return False


def test_sigint_saves_says_how_to_resume_and_the_resume_matches(reference, tiny_llama_dir):
    cfg = _config(reference, tiny_llama_dir, "interrupted", slow=0.5)
    out = reference / "interrupted"
    process = _popen(cfg, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "to resume: qlora-kit train" in err and "train.resume=auto" in err and "Traceback" not in err
    saved = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert saved and f"saved {saved[-1]}" in err
    resumed = _cli("train", cfg, "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {saved[-1]}" in resumed.stdout + resumed.stderr
    assert _bytes(out) == _bytes(reference / "reference")


def test_a_second_process_on_the_same_directory_is_refused(reference, tiny_llama_dir):
    cfg = _config(reference, tiny_llama_dir, "locked", slow=0.5, max_steps=12)
    first = _popen(cfg, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = reference / "locked" / ".qlora_kit.lock"
    deadline = time.time() + 60
    while not (lock.is_file() and lock.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    second = _cli("train", cfg)
    _, err = first.communicate(timeout=300)
    assert second.returncode == 2 and "is in use by pid" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, err[-3000:]
    steps = [
        json.loads(line)["step"] for line in (reference / "locked" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 13))  # the first run finished untouched


def test_a_directory_holding_a_run_is_never_reused_silently(reference, tiny_llama_dir):
    out = reference / "reference"

    def files():  # the lock file records who took it last: not part of the run
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".qlora_kit.lock"}

    before = files()
    refused = _cli("train", _config(reference, tiny_llama_dir, "reference"), "train.max_steps=2")
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert "--overwrite" in refused.stderr and "train.resume=auto" in refused.stderr
    for bad in (
        ["model.name_or_path=/nonexistent"],
        ["train.resume=auto", "model.name_or_path=/nonexistent"],
    ):
        failed = _cli("train", _config(reference, tiny_llama_dir, "reference"), *bad)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert files() == before  # nothing written or deleted


def test_overwrite_replaces_only_the_run_files(tmp_path, tiny_llama_dir):
    cfg = _config(tmp_path, tiny_llama_dir, "run", max_steps=2)
    assert _cli("train", cfg).returncode == 0
    (tmp_path / "run" / "notes.txt").write_text("mine")
    again = _cli("train", cfg, "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_nothing_in_a_run_directory_is_unpickled_or_run(reference, tiny_llama_dir, tmp_path):
    """A crafted pickle in a checkpoint is never read; a run_config.yaml asking for code is refused."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference / "reference", out)
    marker = tmp_path / "pwned"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (out / "checkpoint-6" / name).write_bytes(payload)
    cfg = _config(tmp_path, tiny_llama_dir, "copy", resume="auto", max_steps=7)
    resumed = _cli("train", cfg)
    assert not marker.exists()
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # the extra files are simply not ours to read

    run_config = out / "adapter" / "run_config.yaml"
    data = yaml.safe_load(run_config.read_text())
    data["plugins"] = ["os"]
    run_config.write_text(yaml.safe_dump(data))
    refused = _cli("generate", out / "adapter", "--prompt", "hi", "--max-new-tokens", "2")
    assert refused.returncode == 2 and "--trust-code" in refused.stderr and "plugin" in refused.stderr


def test_manifest_names_a_damaged_file_and_verify_checks_loading(reference):
    out = reference / "reference"
    ok = _cli("verify", out)
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stdout + ok.stderr
    assert "loads (adapter) and gives finite logits" in ok.stdout
    adapter = out / ADAPTER
    original = adapter.read_bytes()
    try:
        adapter.write_bytes(original[: len(original) // 2])
        bad = _cli("verify", out, "--no-load")
        assert bad.returncode == 1 and f"{adapter}: " in bad.stdout and "truncated" in bad.stdout
        gen = _cli("generate", out / "adapter", "--prompt", "hi", "--max-new-tokens", "2")
        assert (
            gen.returncode == 2
            and "adapter_model.safetensors" in gen.stderr
            and "Traceback" not in gen.stderr
        )
    finally:
        adapter.write_bytes(original)


def test_two_processes_from_the_command_line_match_one(tmp_path, tiny_llama_dir):
    """`torchrun --nproc_per_node 2 -m qlora_kit.cli train` on CPUs ends with the adapter one process makes
    with the same global batch (dropout 0: each process draws its own dropout masks). (accelerate 1.x's
    `accelerate launch --cpu --num_processes 2` starts ONE process unless given an mpirun hostfile.)"""
    import socket

    from safetensors.torch import load_file

    cfg = _config(tmp_path, tiny_llama_dir, "two", max_steps=4, save_every=2)
    data = yaml.safe_load(cfg.read_text())
    data["adapter"]["dropout"] = 0.0
    cfg.write_text(yaml.safe_dump(data))
    one = _cli("train", cfg, "train.grad_accum=2", f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
              "-m", "qlora_kit.cli", "train", str(cfg)]  # fmt: skip
    two = subprocess.run(launch, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert two.returncode == 0, two.stderr[-4000:]
    expected, got = load_file(tmp_path / "one" / ADAPTER), load_file(tmp_path / "two" / ADAPTER)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert (got[name] - value).abs().max().item() <= 1e-4, name  # bit-identical when measured
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]  # logged once, by the main process
