"""One command that measures qlora_kit and its peers side by side (../shared/BENCHMARKS.md).

    python benchmarks/harness.py --workloads W2-1B,W2-8B,W3 --systems qlora_kit,qlora_kit_dropout0,hf_loop \
        --out benchmarks/results.jsonl [--run-id ID] [--time-budget 540] [--tiny]

Each (workload, system) runs in its own worker process (worker.py), so peak memory and CUDA state
belong to one system; a system whose packages are missing is recorded as skipped with the reason. One
JSON line per (workload, system) is appended to ``--out`` as soon as it finishes; at the end the
ratios of this ``run_id`` are computed from rows of the same run_id (records.py). Pass ``--run-id`` of
an earlier call to add rows to that run (e.g. Unsloth in a second call of the same lease). README.md
lists the GPU commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, commit  # noqa: E402
from records import append_row, update_ratios  # noqa: E402
from w3_probe import RESTART  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")
W1, W23 = ("W1", "W1-seed-exact"), ("W2-1B", "W2-8B", "W3")
WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {"config": "examples/configs/seed_improved.yaml", "timeout": 420},
    "W1-seed-exact": {"config": "examples/configs/seed_distilgpt2_alpaca.yaml", "timeout": 420},
    "W2-1B": {"shape": "1B", "batch": 4, "seq": 2048, "timeout": 150},
    "W2-8B": {"shape": "8B", "batch": 2, "seq": 2048, "timeout": 240},
    "W3": {"shape": "8B"},  # timeout: --w3-budget
}
SYSTEMS: dict[str, dict[str, Any]] = {
    "qlora_kit": {"base": "ours", "needs": ["bitsandbytes", "pydantic"], "workloads": W1 + W23},
    "qlora_kit_dropout0": {"base": "ours", "needs": ["bitsandbytes", "pydantic"], "workloads": W23,
                           "overrides": ["adapter.dropout=0"]},
    "hf_loop": {"base": "hf_loop", "needs": ["bitsandbytes"], "workloads": W23},
    "hf_liger": {"base": "hf_liger", "needs": ["bitsandbytes", "liger_kernel"], "workloads": W23, "cuda": True},
    "trl_seed": {"base": "trl_seed", "needs": ["trl", "datasets", "bitsandbytes"], "workloads": W1},
    "unsloth": {"base": "unsloth", "needs": ["unsloth", "bitsandbytes"], "workloads": W23, "cuda": True},
}  # fmt: skip
ESTIMATE = {"W1": 160, "W1-seed-exact": 150, "W2-1B": 60, "W2-8B": 75, "W3": 120}
"""Rough seconds per run on one H200 (load and, for W2, compilation included: 1B runs took 53 s in run
2026-11-30i), to skip runs that cannot fit the time budget."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W2-1B,W2-8B")
    ap.add_argument("--systems", default="qlora_kit,qlora_kit_dropout0,hf_loop,hf_liger,unsloth")
    ap.add_argument("--out", default=str(HERE / "results.jsonl"))
    ap.add_argument("--run-id", help="add to this run (default: a new id)")
    ap.add_argument("--time-budget", type=float, help="seconds for the whole command; later runs are skipped")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: checks every code path")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--shapes-dir", default=os.environ.get("QK_SHAPES_DIR", "/tmp/qk-shapes"))
    ap.add_argument("--log-dir", help="worker logs (default: /tmp/qk-bench-logs/RUN_ID)")
    ap.add_argument(
        "--ours-overrides", nargs="*", default=[], help="dotted overrides for every qlora_kit system"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=K=V[,K=V]",
        help="an extra system qlora_kit:NAME with these overrides (repeatable)",
    )
    ap.add_argument("--peer-dropout", type=float, default=0.05, help="LoRA dropout of hf_loop and hf_liger")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed W2 steps after the warm-up")
    ap.add_argument("--w3-start", type=int, default=8192)
    ap.add_argument("--w3-resolution", type=int, default=4096)
    ap.add_argument("--w3-cap", type=int, default=1 << 20)
    ap.add_argument("--w3-steps", type=int, default=2, help="steps per W3 probe (1: no warm-up)")
    ap.add_argument(
        "--w3-budget",
        type=float,
        default=540,
        help="seconds per system for W3 (load and search); probes that would end later are not started",
    )
    ap.add_argument(
        "--w1-data", default=os.environ.get("QK_W1_DATA", str(SHARED / "data" / "alpaca_en_demo.json"))
    )
    ap.add_argument(
        "--w1-tokenizer", default=os.environ.get("QK_W1_TOKENIZER", str(SHARED / "assets" / "gpt2-tokenizer"))
    )
    ap.add_argument("--w1-work-dir", default="/tmp/qk-w1")
    return ap.parse_args(argv)


def system_table(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The built-in systems plus ``--variant`` ones."""
    table = dict(SYSTEMS)
    for item in args.variant:
        name, _, overrides = item.partition("=")
        table[f"qlora_kit:{name}"] = {**SYSTEMS["qlora_kit"], "overrides": overrides.split(",")}
    return table


EXPERIMENT_PREFIX = "QK_BENCH_"
"""Environment variables that switch a W2/W3 worker into an experiment (worker.py's ``make_session``):
``QK_BENCH_ACT_BUDGET`` (torch's activation memory budget for compiled layers), ``QK_BENCH_RNG_RECOMPUTE``
(``functionalize_rng_ops``), ``QK_BENCH_LIGHT_COMPILED`` (the light LoRA dropout in compiled layers),
``QK_BENCH_COMPILE_MODE`` (torch.compile's mode for the decoder layers), ``QK_BENCH_FUNCTORCH``
(``NAME=0|1`` words setting boolean flags of ``torch._functorch.config``, the partitioner's)."""


def experiment_switches(env: Mapping[str, str]) -> str:
    """The experiment switches set in ``env``, as ``NAME=value`` words ('' when none)."""
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith(EXPERIMENT_PREFIX) and v)


def unavailable(info: dict[str, Any], device: str) -> str | None:
    """Why a system cannot run here (a missing package, no CUDA), or None."""
    missing = [m for m in info["needs"] if importlib.util.find_spec(m) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if info.get("cuda") and not device.startswith("cuda"):
        return "needs a CUDA device"
    return None


class Harness:
    """Runs the requested (workload, system) pairs, one worker process each, and records the rows."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run_id = (
            args.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:4]
        )
        self.device = "cpu" if args.tiny else args.device
        self.log_dir = Path(args.log_dir or f"/tmp/qk-bench-logs/{self.run_id}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.commit = commit()
        self.shapes: dict[str, dict[str, Any]] = {}

    def left(self) -> float:
        budget = self.args.time_budget
        return float("inf") if budget is None else budget - (time.monotonic() - self.started)

    def run_all(self) -> list[dict[str, Any]]:
        table = system_table(self.args)
        names = list(
            dict.fromkeys(self.args.systems.split(",") + [s for s in table if s.startswith("qlora_kit:")])
        )
        workloads = self.args.workloads.split(",")
        for workload in workloads:
            for name in names:
                info = table[name]
                if workload not in info["workloads"] or (
                    workload == "W1-seed-exact" and name == "trl_seed" and "W1" in workloads
                ):
                    continue  # not applicable; TRL's seed job is one run compared with both W1 workloads
                self.record(workload, name, self.measure(workload, name, info))
        rows = update_ratios(self.args.out, self.run_id)
        for row in rows:
            print(f"[harness] {row['workload']:<14}{row['system']:<22}ratio {row.get('ratio')}  "
                  f"ratio_unsloth {row.get('ratio_unsloth')}", flush=True)  # fmt: skip
        return rows

    def measure(self, workload: str, name: str, info: dict[str, Any]) -> dict[str, Any]:
        reason = unavailable(info, self.device)
        estimate = 60 if self.args.tiny else ESTIMATE[workload]
        if workload == "W3":
            estimate = min(estimate, self.args.w3_budget)
        if reason is None and self.left() < estimate:
            reason = f"time budget: {self.left():.0f} s left, the run needs about {estimate} s"
        if reason:
            return {"status": "skipped", "skipped": reason}
        spec = self.spec(workload, name, info)
        timeout = self.args.w3_budget if workload == "W3" else WORKLOADS[workload]["timeout"]
        timeout = min(300 if self.args.tiny else timeout, self.left())
        return self.run_worker(workload, name, spec, timeout)

    def spec(self, workload: str, name: str, info: dict[str, Any]) -> dict[str, Any]:
        wl, args = WORKLOADS[workload], self.args
        spec: dict[str, Any] = {
            "workload": workload, "system": name, "base": info["base"], "device": self.device,
            "overrides": [*info.get("overrides", []), *args.ours_overrides] if info["base"] == "ours" else [],
            "optimizer": "paged_adamw_8bit", "peer_dropout": args.peer_dropout,
            "warmup": args.warmup, "steps": args.steps,
        }  # fmt: skip
        if workload in W1:
            spec["w1"] = {"data": args.w1_data, "tokenizer": args.w1_tokenizer, "config": str(ROOT / wl["config"]),
                          "work_dir": f"{args.w1_work_dir}/{workload}-{name}", "max_steps": None}  # fmt: skip
            if args.tiny:  # the code path only: short rows, few held-out rows, no merged export
                spec["w1"].update(heldout=8, max_steps=1)
                spec["overrides"] += ["data.max_length=128", "export={kind: adapter}"]
            return spec
        shape = self.shape(wl["shape"])
        spec.update(model_dir=shape["dir"], row_vocab=shape["row_vocab"])
        if workload == "W3":
            cap = 1024 if args.tiny else args.w3_cap
            spec.update(max_seq_length=cap, fake_oom_tokens=300 if args.tiny else None,
                fake_broken_oom_tokens=448 if args.tiny else None, w3={
                "start": 64 if args.tiny else args.w3_start, "resolution": 64 if args.tiny else args.w3_resolution,
                "cap": cap, "steps": args.w3_steps})  # fmt: skip
        else:
            seq = 64 if args.tiny else wl["seq"]
            spec.update(seq=seq, batch=wl["batch"], max_seq_length=seq)
        return spec

    def shape(self, shape: str) -> dict[str, Any]:
        """Create the random-weight model once (in a child process: no CUDA context stays here)."""
        if shape not in self.shapes:
            command = [sys.executable, str(HERE / "w2_shapes.py"), "--root", self.args.shapes_dir, "--shapes", shape,
                       *(["--tiny"] if self.args.tiny else [])]  # fmt: skip
            made = json.loads(
                subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1]
            )
            meta = json.loads((Path(made["dir"]) / "bench_meta.json").read_text(encoding="utf-8"))
            self.shapes[shape] = {"dir": made["dir"], "row_vocab": meta["row_vocab"]}
            print(
                f"[harness] shape {shape}: {made['dir']} (created in {made['created_seconds']} s, not counted)",
                flush=True,
            )
        return self.shapes[shape]

    def run_worker(self, workload: str, name: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        stem = self.log_dir / f"{workload}-{name.replace(':', '_')}"
        env = dict(os.environ)
        if workload == "W3":  # a failed probe must not leave fragmentation behind (w3_probe.py)
            env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        end = time.monotonic() + timeout
        code, result = _spawn(stem, spec, env, end)
        restarts = 0
        while code == RESTART and restarts < 2:  # a W3 search goes on in a fresh process
            restarts += 1
            hi = min(x for x in (result.get("first_oom_seq"), result["restart_seq"]) if x)
            spec["w3"] = {
                **spec["w3"],
                "lo": result.get("max_seq") or 0,
                "hi": hi,
                "probes": result.get("probes", []),
            }
            code, result = _spawn(stem, spec, env, end)
        result["process_seconds"] = round(timeout - (end - time.monotonic()), 1)
        if workload == "W3":
            result["restarts"] = restarts
            if code != 0 and result.get("max_seq") and result.get("status") in ("partial", "restart"):
                # killed, or restarted too often, mid-search: the lengths that trained count, as a lower bound
                result.update(status="ok", max_seq_bound="timeout" if code is None else "restarts")
        if code is None and result.get("status") != "ok":
            result.update(status="timeout", error=f"killed after {timeout:.0f} s")
        elif code not in (0, None) and result.get("status") not in ("ok", "error"):
            result.update(status="error", error=f"worker exited {code}; see {stem}.log")
        if result.get("status") != "ok":
            tail = Path(f"{stem}.log").read_text(encoding="utf-8", errors="replace").splitlines()[-12:]
            print("\n".join(f"    | {line[:200]}" for line in tail), flush=True)
        spec.pop("deadline", None)
        result["config"] = {"spec": spec, **(result.get("config") or {})}
        return result

    def record(self, workload: str, system: str, result: dict[str, Any]) -> None:
        row = {
            "run_id": self.run_id, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": self.commit, "workload": workload, "system": system, "tiny": self.args.tiny,
            "status": result.pop("status", "error"), "tokens_per_s": None, "train_seconds": None,
            "command_seconds": None, "peak_gib": None, "mfu": None, "heldout_loss": None, "max_seq": None,
            "ratio": None, "ratio_unsloth": None,
        }  # fmt: skip
        row.update(result)
        if row["command_seconds"] is None:
            row["command_seconds"] = row.get("process_seconds")
        switches = experiment_switches(os.environ)
        if switches:  # measured through a benchmark-only switch: never a "latest" result (results_table.py)
            row["experiment"] = f"switched by {switches}"
        append_row(self.args.out, row)
        print(f"[harness] {workload:<14}{system:<22}{row['status']:<8}" + _brief(row), flush=True)


def _spawn(
    stem: Path, spec: dict[str, Any], env: dict[str, str], end: float
) -> tuple[int | None, dict[str, Any]]:
    """Run one worker until ``end`` (monotonic); its exit status (None: killed) and its result file."""
    result_file = Path(f"{stem}.result.json")
    result_file.unlink(missing_ok=True)
    spec["deadline"] = time.time() + (end - time.monotonic()) - 15  # the W3 search stops probing before it
    Path(f"{stem}.spec.json").write_text(json.dumps(spec), encoding="utf-8")
    command = [
        sys.executable,
        str(HERE / "worker.py"),
        "--spec",
        f"{stem}.spec.json",
        "--result",
        str(result_file),
    ]
    with open(f"{stem}.log", "a", encoding="utf-8") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=max(1.0, end - time.monotonic())).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = None
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else {}
    return code, result


def _brief(row: dict[str, Any]) -> str:
    if row["status"] == "skipped":
        return row["skipped"]
    keys = ("tokens_per_s", "max_seq", "max_seq_bound", "train_seconds", "heldout_loss", "peak_gib", "mfu",
            "loss_first", "loss_last", "grad_norm", "load_seconds", "process_seconds", "error")  # fmt: skip
    return "  ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)


def precompile_sources() -> None:
    """Compile the Python sources the runs import to bytecode before anything is timed, as pip does on a
    user's install. The GPU machine's image carries no bytecode for its own packages (torch, transformers,
    peft: no ``.pyc`` files) and sets ``PYTHONDONTWRITEBYTECODE=1``, and the carried wheels are installed with
    ``pip --no-compile``: every process compiled what it imported, ~15 s a command (call 47: ``import
    bitsandbytes`` 12.5-13.8 s, ``import transformers, peft, datasets`` 16.5-18.8 s), for every system alike.
    Covers ``PYTHONPATH`` and the interpreter's site-packages; compiling is not timed and the same for all."""
    import site

    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).is_dir()]
    paths += [p for p in site.getsitepackages() if Path(p).is_dir() and os.access(p, os.W_OK)]
    if paths:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *dict.fromkeys(paths)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # fmt: skip
        print(
            f"[harness] bytecode compiled in {time.monotonic() - started:.0f} s (not counted): "
            f"{', '.join(dict.fromkeys(paths))}",
            flush=True,
        )


WARM_UP = """
import torch
if torch.cuda.is_available():
    import bitsandbytes.functional as bnb_f
    import torch.nn.functional as F
    x = torch.randn(4, 8, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    F.scaled_dot_product_attention(x, x, x, is_causal=True).sum().backward()
    w = torch.randn(1024, 1024, device="cuda")
    packed, state = bnb_f.quantize_4bit(w, quant_type="nf4")
    (bnb_f.dequantize_4bit(packed, state).bfloat16() @ x.detach().new_ones(1024, 64)).sum().item()
"""


def warm_up_device() -> None:
    """Touch CUDA, cuBLAS, flash attention and bitsandbytes once in a child process before anything is timed.
    The first CUDA process on a fresh GPU machine reads the libraries from a cold disk: W1's training took
    7.01 s as the first process of run 2026-12-01k and 5.16 s right after (run l); 10.68 s against 6.9 s in
    call 48. Whichever system ran first paid for it; now none does. Not timed, the same for all systems."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", WARM_UP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    print(f"[harness] device warmed up in {time.monotonic() - started:.0f} s (not counted)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    known = system_table(args)
    for flag, names, valid in (
        ("--workloads", args.workloads, WORKLOADS),
        ("--systems", args.systems, known),
    ):
        unknown = [n for n in names.split(",") if n not in valid]
        if unknown:
            raise SystemExit(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(valid)}")
    precompile_sources()
    warm_up_device()
    harness = Harness(args)
    print(f"[harness] run_id {harness.run_id}  commit {harness.commit}  device {harness.device}  "
          f"logs {harness.log_dir}  out {args.out}", flush=True)  # fmt: skip
    rows = harness.run_all()
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
