"""benchmarks/harness.py: the --tiny run end to end, and the ratio and W3-search rules it relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from records import add_ratios  # noqa: E402
from w3_probe import next_length  # noqa: E402

FIELDS = {"run_id", "date", "commit", "workload", "system", "status", "tokens_per_s", "train_seconds",
          "command_seconds", "peak_gib", "mfu", "heldout_loss", "max_seq", "ratio", "ratio_unsloth"}  # fmt: skip


def _row(run_id, workload, system, **metrics):
    return {"run_id": run_id, "workload": workload, "system": system, "status": "ok", **metrics}


def test_ratios_use_only_rows_of_the_same_run():
    rows = [
        _row("a", "W2-8B", "hf_loop", tokens_per_s=100.0),
        _row("a", "W2-8B", "unsloth", tokens_per_s=400.0),
        _row("a", "W2-8B", "qlora_kit", tokens_per_s=300.0),
        _row("b", "W2-8B", "hf_loop", tokens_per_s=10.0),  # another day: never a reference for run a
        _row("a", "W1", "trl_seed", train_seconds=120.0),
        _row("a", "W1-seed-exact", "qlora_kit", train_seconds=100.0),  # TRL's one job serves both W1s
        _row("a", "W3", "qlora_kit", max_seq=65536),
        _row("a", "W3", "hf_loop", status="error", max_seq=None),
    ]
    add_ratios(rows, "a")
    ours, unsloth, hf = rows[2], rows[1], rows[0]
    assert (ours["ratio"], ours["ratio_unsloth"]) == (3.0, 0.75)
    assert (unsloth["ratio"], unsloth["ratio_unsloth"]) == (4.0, None)
    assert hf["ratio"] is None and "ratio" not in rows[3]
    assert rows[5]["ratio"] == 1.2  # TRL's time over ours
    assert rows[6]["ratio"] is None  # the HF loop's W3 failed: no ratio


def test_w4_rows_compare_with_qlora_kit_on_one_gpu_of_the_same_run():
    rows = [
        _row("a", "W4-single", "qlora_kit_single", tokens_per_s=100.0),
        _row("a", "W4-ddp", "qlora_kit_ddp", tokens_per_s=186.0),
        _row("a", "W4-fsdp", "qlora_kit_fsdp", status="failed", tokens_per_s=None),
        _row("b", "W4-ddp", "qlora_kit_ddp", tokens_per_s=150.0),  # no single-GPU row in run b
    ]
    add_ratios(rows, "a")
    add_ratios(rows, "b")
    assert [r["ratio"] for r in rows] == [None, 1.86, None, None]


def test_the_plan_predicts_the_recorded_h200_peaks_within_15_percent(capsys):
    """`benchmarks/plan_check.py`: the planner (config.json alone) against qlora_kit's W2/W3 rows of the
    latest GPU run in results.jsonl, with the settings the Trainer's `auto` would choose there."""
    import plan_check

    assert plan_check.main(["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["workload"] for r in rows} >= {"W2-8B", "W2-1B", "W3"}
    for row in rows:
        assert abs(row["peak_error"]) <= 0.15, row


def test_w3_search_doubles_then_bisects_to_the_resolution():
    assert next_length(0, None, 8192, 4096, 1 << 20) == 8192
    assert next_length(65536, None, 8192, 4096, 1 << 20) == 131072
    assert next_length(65536, 131072, 8192, 4096, 1 << 20) == 98304
    assert next_length(65536, 73728, 8192, 4096, 1 << 20) == 69632
    assert next_length(65536, 69632, 8192, 4096, 1 << 20) is None
    assert next_length(786432, None, 8192, 4096, 1 << 20) == 1 << 20  # capped
    assert next_length(1 << 20, None, 8192, 4096, 1 << 20) is None


@pytest.mark.slow
def test_tiny_harness_run(tmp_path):
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, str(ROOT / "benchmarks" / "harness.py"), "--tiny", "--workloads", "W2-1B,W3",
               "--systems", "qlora_kit,hf_loop,hf_liger,unsloth", "--out", str(out), "--warmup", "1",
               "--steps", "3", "--shapes-dir", str(tmp_path / "shapes"), "--log-dir", str(tmp_path / "logs")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = {(r["workload"], r["system"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert len({r["run_id"] for r in rows.values()}) == 1
    for row in rows.values():
        assert set(row) >= FIELDS, FIELDS - set(row)
    for name in ("hf_liger", "unsloth"):
        module = "liger_kernel" if name == "hf_liger" else "unsloth"
        if importlib.util.find_spec(module) is None:
            assert rows[("W2-1B", name)]["status"] == "skipped"
            assert module in rows[("W2-1B", name)]["skipped"]

    ours, hf = rows[("W2-1B", "qlora_kit")], rows[("W2-1B", "hf_loop")]
    for row in (ours, hf):
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["grad_norm"] > 0
        assert row["loss_last"] < row["loss_first"]  # the same batch, trained on: proof of training
        assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(row["versions"])
    assert ours["config"]["config"]["adapter"]["r"] == 16 and hf["config"]["r"] == 16
    assert ours["ratio"] == round(ours["tokens_per_s"] / hf["tokens_per_s"], 3) and hf["ratio"] is None

    # tiny mode fakes running out of memory above 300 tokens, and above 448 the kind of failure after
    # which the search goes on in a fresh process (512 is never a clean probe: it restarts the worker)
    for system in ("qlora_kit", "hf_loop"):
        w3 = rows[("W3", system)]
        assert (w3["max_seq"], w3["max_seq_bound"], w3["first_oom_seq"], w3["restarts"]) == (
            256,
            "oom",
            320,
            1,
        )
        assert [p["seq"] for p in w3["probes"]] == [64, 128, 256, 384, 320]
        assert [p["ok"] for p in w3["probes"]] == [True, True, True, False, False]
    assert rows[("W3", "qlora_kit")]["ratio"] == 1.0


def test_experiment_rows_are_marked_and_never_the_latest_results():
    """A row measured through a benchmark-only switch (QK_BENCH_*) says so, and neither the latest-results
    table nor plan_check takes its run as a workload's latest."""
    from harness import experiment_switches
    from results_table import latest_runs

    assert experiment_switches({"QK_BENCH_ACT_BUDGET": "0.5", "PATH": "/bin", "QK_BENCH_X": ""}) == (
        "QK_BENCH_ACT_BUDGET=0.5"
    )
    assert experiment_switches({"HOME": "/root"}) == ""
    base = {"workload": "W2-8B", "system": "qlora_kit", "status": "ok", "tokens_per_s": 1.0, "ratio": None}
    rows = [
        {**base, "run_id": "a", "date": "2026-11-30T10:00:00"},
        {**base, "run_id": "b", "date": "2026-11-30T11:00:00", "experiment": "switched by QK_BENCH_X=1"},
    ]
    assert [r["run_id"] for r in latest_runs(rows)["W2-8B"]] == ["a"]


def test_step_phases_attributes_each_step_of_a_cli_run(tiny_run_config, tmp_path, capsys):
    """benchmarks/step_phases.py on the tiny model: every phase the loop runs is timed, the timed steps are
    the run's after the warm-up, and the phases inside a step add up to no more than the step."""
    from step_phases import main as phases

    out = tmp_path / "phases.json"
    cfg = tiny_run_config(max_steps=5, micro_batch_size=2, grad_accum=2, micro_batch_tokens=None)
    assert phases(["--skip", "2", "--kernels", "2", "--out", str(out), "--", str(cfg)]) == 0
    report = json.loads(out.read_text())
    assert report["timed_steps"] == 3
    parts = {k for k in report["phases_ms"] if k.startswith("> ")}  # parts of forward + loss
    assert set(report["phases_ms"]) - parts == {"collate", "forward + loss", "backward", "clip", "optimizer",
                                                "zero_grad", "schedule", "between steps", "unattributed"}  # fmt: skip
    assert "> attention mask" in parts
    # each a part of forward + loss (the mask is built inside the model's forward, so they nest)
    assert all(report["phases_ms"][k] <= report["phases_ms"]["forward + loss"] for k in parts)
    inside = sum(
        v for k, v in report["phases_ms"].items() if k not in ("collate", "between steps") and k not in parts
    )
    assert inside == pytest.approx(report["step_ms"])  # unattributed closes the sum
    assert 0 <= report["phases_ms"]["unattributed"] < report["step_ms"]
    printed = capsys.readouterr().out
    assert "per step:" in printed and "top operators by self_cpu_time_total" in printed
    from qlora_kit.training.loop import Trainer

    assert Trainer._step.__module__ == "qlora_kit.training.loop"  # the loop is put back afterwards
