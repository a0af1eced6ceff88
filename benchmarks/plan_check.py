"""`qlora-kit plan`'s predictions beside the H200 measurements in ``results.jsonl`` (runs on a CPU).

For each qlora_kit row of W2 and W3 in the latest run, the planner is asked what the Trainer's `auto`
settings would choose for that row's config on a 139.8 GiB GPU (the H200 as the Trainer saw it) with the
loss the run used (``fused`` on CUDA), and its predicted peak (allocated) memory and tokens/s are printed
next to the measured ones::

    python benchmarks/plan_check.py [--results benchmarks/results.jsonl] [--json] [--run RUN_ID ...]

Only ``config.json`` files are written (random shapes of ``w2_shapes.py``, on the meta device): no weights.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from w2_shapes import COMMON, SHAPES  # noqa: E402

HERE = Path(__file__).resolve().parent
H200_GIB = 139.8  # what torch reported as the device's memory in those runs
HOST_GIB = 125.0  # the H200 machine's memory (`free -g`), which offload's pinned buffers are judged against
WORKLOADS = {"W2-8B": ("8B", 2, 2048), "W2-1B": ("1B", 4, 2048), "W3": ("8B", 1, None)}
DROPOUT = {"qlora_kit": 0.05, "qlora_kit_dropout0": 0.0}


def write_shape(root: Path, shape: str) -> Path:
    """A directory holding only the shape's config.json."""
    from transformers import LlamaConfig

    path = root / shape
    LlamaConfig(**COMMON, **SHAPES[shape], dtype="bfloat16", use_cache=False).save_pretrained(path)
    return path


def run_config(
    model_dir: Path,
    rows: int,
    seq: int,
    dropout: float,
    compile: bool | str = "auto",
    budget: float | None = None,
) -> Any:
    """The harness's qlora_kit config for a row (library defaults elsewhere, as ``benchmarks/ours.py``)."""
    from qlora_kit.config.io import load_config

    return load_config({
        "model": {"name_or_path": str(model_dir)},
        "quant": {"kind": "bnb_4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
        "adapter": {"r": 16, "alpha": 32, "dropout": dropout, "target_modules": "all-linear"},
        "data": {"max_length": seq},
        "train": {"micro_batch_size": rows, "grad_accum": 1, "optimizer": {"kind": "paged_adamw_8bit"},
                  "compile": compile, "memory_budget_gib": budget},
    })  # fmt: skip


def latest_rows(path: Path, runs: list[str] | None = None) -> list[dict[str, Any]]:
    """qlora_kit's W2/W3 rows: for each workload, those of the latest run that has it, or of ``runs``."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ours = [
        r
        for r in rows
        if r.get("workload") in WORKLOADS
        and r.get("system", "").startswith("qlora_kit")
        and r.get("status") == "ok"
    ]
    if runs:
        return [r for r in ours if r["run_id"] in runs]
    ours = [r for r in ours if not r.get("experiment")]  # switched by benchmark-only variables: not planned
    latest = {r["workload"]: r["run_id"] for r in sorted(ours, key=lambda r: r["run_id"])}
    return [r for r in ours if r["run_id"] == latest[r["workload"]]]


def compare(row: dict[str, Any], shapes: dict[str, Path]) -> dict[str, Any]:
    shape, rows, seq = WORKLOADS[row["workload"]]
    seq = seq or row["max_seq"]
    # the settings the row ran with (rows from before `train.compile` existed ran eagerly)
    ran = (row.get("config") or {}).get("config") or {}
    train, dropout = (
        ran.get("train", {}),
        ran.get("adapter", {}).get("dropout", DROPOUT.get(row["system"], 0.05)),
    )
    memory = (row.get("config") or {}).get("memory")
    per_pass = re.search(r"(\d+) tokens per forward pass", memory or "")
    if per_pass:  # a run that split its steps (`train.micro_batch_tokens`) is planned per pass
        rows = max(1, min(rows, int(per_pass[1]) // seq))
    cfg = run_config(
        shapes[shape], rows, seq, dropout, train.get("compile", False), train.get("memory_budget_gib")
    )
    # rows from before the hashed dropout ran PEFT's dropout in compiled layers (and record no switch)
    light_in_compiled = bool((row.get("config") or {}).get("light_in_compiled", False))
    plan = plan_as_run(cfg, seq, memory, light_in_compiled)
    predicted = plan.memory.peak_allocated / 2**30
    return {
        "run_id": row["run_id"], "workload": row["workload"], "system": row["system"], "tokens": rows * seq,
        "settings": asdict(plan.settings), "peak_gib_predicted": round(predicted, 1),
        "peak_gib_measured": row["peak_gib"], "peak_error": round(predicted / row["peak_gib"] - 1, 3),
        "tokens_per_s_predicted": round(plan.speed.tokens_per_s), "tokens_per_s_measured": row["tokens_per_s"],
        "speed_error": round(plan.speed.tokens_per_s / row["tokens_per_s"] - 1, 3),
    }  # fmt: skip


def plan_as_run(cfg: Any, seq: int, memory: str | None, light_in_compiled: bool = False) -> Any:
    """The plan for the settings the Trainer chose in the run: read from the row's memory line where it has
    one ("checkpointing on for the first 26 decoder layers, activation offload off, ..."); older rows (no
    line, before some-layer checkpointing) as their `auto` then chose: the first of none / all / all with
    offload that fits. The loss is ``fused``, what `auto` takes on CUDA; ``light_in_compiled`` as the row ran
    (``LightDropoutLinear.in_compiled``)."""
    from dataclasses import replace

    from qlora_kit.planning.from_config import adapter_of
    from qlora_kit.planning.plan import plan_run, settings_of, shape_of

    base = replace(settings_of(cfg, shape_of(cfg)), loss="fused")
    adapter = replace(adapter_of(cfg, shape_of(cfg)), light_in_compiled=light_in_compiled)

    def plan(
        checkpointing: bool, offload: bool, layers: int | None = None, offloaded: int | None = None
    ) -> Any:
        settings = replace(base, grad_checkpointing=checkpointing, activation_offload=offload,
                           checkpoint_layers=layers, offload_layers=offloaded)  # fmt: skip
        return plan_run(cfg, gpu_memory_gib=H200_GIB, seq_tokens=seq, settings=settings,
                        host_memory_gib=HOST_GIB, adapter=adapter)  # fmt: skip

    if memory:

        def first(knob: str) -> int | None:
            found = re.search(knob + r" on for the first (\d+) decoder layers", memory)
            return int(found[1]) if found else None

        return plan("checkpointing on" in memory, "activation offload on" in memory,
                    first("checkpointing"), first("activation offload"))  # fmt: skip
    for checkpointing, offload in ((False, False), (True, False), (True, True)):
        chosen = plan(checkpointing, offload)
        if chosen.verdict == "fits":
            return chosen
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results.jsonl"))
    ap.add_argument("--json", action="store_true", help="one JSON line per row instead of a table")
    ap.add_argument(
        "--run", action="append", help="these runs' rows (repeatable) instead of the latest per workload"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shapes = {name: write_shape(Path(tmp), name) for name in ("8B", "1B")}
        results = [compare(row, shapes) for row in latest_rows(Path(args.results), args.run)]
    if args.json:
        print("\n".join(json.dumps(r) for r in results))
        return 0
    print(
        "| run | workload | system | tokens | plan: checkpointing, offload | peak GiB planned / measured "
        "| tokens/s planned / measured |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s = r["settings"]
        ckpt = (
            "off"
            if not s["grad_checkpointing"]
            else "on"
            if not s["checkpoint_layers"]
            else f"first {s['checkpoint_layers']} layers"
        )
        offload = (
            "off"
            if not s["activation_offload"]
            else f"first {s['offload_layers']} layers"
            if s["offload_layers"]
            else "on"
        )
        print(f"| {r['run_id']} | {r['workload']} | {r['system']} | {r['tokens']:,} | "
              f"{ckpt}, {offload} | "
              f"{r['peak_gib_predicted']} / {r['peak_gib_measured']:.1f} ({r['peak_error']:+.0%}) | "
              f"{r['tokens_per_s_predicted']:,} / {r['tokens_per_s_measured']:,.0f} ({r['speed_error']:+.0%}) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
