"""results.jsonl: one JSON line per (workload, system) per harness run, and the ratios between them.

Ratios compare rows of the SAME ``run_id`` only (one machine, one lease), never numbers from another
day: ``ratio`` is against the reference peer of the workload (W1: the TRL seed recipe's training time
over the row's; W2: the row's tokens/s over the HF loop's; W3: the row's max_seq over the HF loop's;
W4: the row's tokens/s over qlora_kit's own on one GPU) and ``ratio_unsloth`` against Unsloth (W2, W3). A row gets no ratio against itself, and none
when the reference did not finish in that run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REFERENCE = {"W1": "trl_seed", "W2": "hf_loop", "W3": "hf_loop", "W4": "qlora_kit_single"}
UNSLOTH = "unsloth"


def family(workload: str) -> str:
    """``W2-8B`` -> ``W2``; ``W1-seed-exact`` -> ``W1``."""
    return workload.split("-", 1)[0]


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a results file (none if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row and flush it to disk (a killed harness keeps the rows it finished)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the file's rows atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _metric(row: dict[str, Any]) -> float | None:
    fam = family(row["workload"])
    value = {"W1": row.get("train_seconds"), "W3": row.get("max_seq")}.get(fam, row.get("tokens_per_s"))
    return value if row.get("status") == "ok" and value else None


def _ratio(row: dict[str, Any], ref: dict[str, Any] | None) -> float | None:
    if ref is None or ref is row:
        return None
    mine, theirs = _metric(row), _metric(ref)
    if mine is None or theirs is None:
        return None
    # W1 compares times (less is better): the reference's time over ours
    return round(theirs / mine if family(row["workload"]) == "W1" else mine / theirs, 3)


def _find(rows: list[dict[str, Any]], workload: str, system: str) -> dict[str, Any] | None:
    """The row of ``system`` in ``workload``; for W1 and W4 variants, in any workload of the family in the
    run (the TRL seed recipe is one job, compared with both W1 and W1-seed-exact; W4-single is the
    reference of W4-ddp and W4-fsdp)."""
    same = [r for r in rows if r["workload"] == workload and r["system"] == system and _metric(r)]
    if same:
        return same[-1]
    if family(workload) in ("W1", "W4"):
        other = [
            r
            for r in rows
            if family(r["workload"]) == family(workload) and r["system"] == system and _metric(r)
        ]
        return other[-1] if other else None
    return None


def add_ratios(rows: list[dict[str, Any]], run_id: str) -> None:
    """Fill ``ratio`` and ``ratio_unsloth`` of the rows of ``run_id`` in place."""
    mine = [r for r in rows if r.get("run_id") == run_id]
    for row in mine:
        fam = family(row["workload"])
        ref = _find(mine, row["workload"], REFERENCE[fam]) if fam in REFERENCE else None
        row["ratio"] = _ratio(row, ref)
        if fam in ("W2", "W3"):
            row["ratio_unsloth"] = _ratio(row, _find(mine, row["workload"], UNSLOTH))


def update_ratios(path: str | Path, run_id: str) -> list[dict[str, Any]]:
    """Recompute the ratios of ``run_id`` in the file; returns that run's rows."""
    rows = read_rows(path)
    add_ratios(rows, run_id)
    write_rows(path, rows)
    return [r for r in rows if r.get("run_id") == run_id]
