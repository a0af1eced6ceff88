"""Regenerate the "latest results" tables of benchmarks/RESULTS.md from benchmarks/results.jsonl.

For each workload the latest run_id that measured it is shown (all its systems, ratios from that run
only). Only the text between the two markers is replaced; the hand-written sections stay.

    python benchmarks/results_table.py [--results benchmarks/results.jsonl] [--md benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from records import add_ratios, family, read_rows  # noqa: E402

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- harness-tables:begin -->", "<!-- harness-tables:end -->"
ORDER = ["W1", "W1-seed-exact", "W2-1B", "W2-8B", "W3", "W4-single", "W4-ddp", "W4-fsdp"]


def latest_runs(rows: list[dict[str, Any]], include_tiny: bool = False) -> dict[str, list[dict[str, Any]]]:
    """workload -> the rows of the latest run_id that measured it (ratios recomputed within that run).
    Rows marked ``experiment`` (a profiled run, an A/B through a benchmark-only switch) are never "latest":
    RESULTS.md's reading sections discuss them."""
    rows = [r for r in rows if (include_tiny or not r.get("tiny")) and not r.get("experiment")]
    out: dict[str, list[dict[str, Any]]] = {}
    for workload in sorted({r["workload"] for r in rows}, key=lambda w: (ORDER + [w]).index(w)):
        mine = [r for r in rows if r["workload"] == workload]
        run_id = max(mine, key=lambda r: r["date"])["run_id"]
        add_ratios(rows, run_id)
        out[workload] = [r for r in mine if r["run_id"] == run_id]
    return out


def _num(x: Any, fmt: str = "{:,.0f}") -> str:
    return "" if x is None else fmt.format(x)


def _ratio(x: Any) -> str:
    return "" if x is None else f"{x:.2f}x"


def _loss(r: dict[str, Any]) -> str:
    first, last = r.get("loss_first"), r.get("loss_last")
    return "" if first is None and last is None else f"{_num(first, '{:.3f}')} -> {_num(last, '{:.3f}')}"


def _mem(r: dict[str, Any]) -> str:
    alloc, reserved = r.get("peak_gib"), r.get("peak_reserved_gib")
    return "" if alloc is None else f"{alloc:.1f} / {_num(reserved, '{:.1f}')}"


def _status(r: dict[str, Any]) -> str | None:
    if r["status"] == "ok":
        return None
    return f"{r['status']}: {r.get('skipped') or r.get('error') or ''}"[:120]


def table(workload: str, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for one workload's latest run."""
    first = rows[0]
    v = first.get("versions") or {}
    lines = [f"### {workload}: run `{first['run_id']}`, tree `{first['commit']}`, {first['date'][:10]}",
             "", f"{next((r.get('device_name') for r in rows if r.get('device_name')), 'device not recorded')}; "
             f"torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
             f"bitsandbytes {v.get('bitsandbytes')}", ""]  # fmt: skip
    fam = family(workload)
    if fam == "W1":
        lines += ["| system | training s | command s | held-out response loss | peak GiB | TRL time / ours |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        cells = lambda r: [_num(r.get("train_seconds"), "{:.1f}"), _num(r.get("command_seconds"), "{:.1f}"),  # noqa: E731
                           _num(r.get("heldout_loss"), "{:.3f}"), _num(r.get("peak_gib"), "{:.2f}"), _ratio(r.get("ratio"))]  # fmt: skip
    elif fam == "W3":
        lines += ["| system | max_seq | bound | peak GiB (alloc / reserved) | s/step | vs HF loop | vs Unsloth |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        cells = lambda r: [_num(r.get("max_seq")), r.get("max_seq_bound") or "", _mem(r),  # noqa: E731
                           _num(r.get("s_per_step"), "{:.2f}"), _ratio(r.get("ratio")), _ratio(r.get("ratio_unsloth"))]  # fmt: skip
    elif workload.startswith("W4"):
        lines += ["| system | GPUs | tokens/s | vs one GPU | GiB per GPU after prepare | peak GiB per GPU | loss: max relative difference to one GPU |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        cells = lambda r: [_num(r.get("gpus")), _num(r.get("tokens_per_s")), _ratio(r.get("ratio")),  # noqa: E731
                           _num(r.get("mem_after_prepare_gib"), "{:.2f}"), _num(r.get("peak_gib"), "{:.1f}"),
                           _num(r.get("max_loss_difference"), "{:.2e}")]  # fmt: skip
    else:
        lines += ["| system | tokens/s | vs HF loop | vs Unsloth | peak GiB (alloc / reserved) | MFU | first step s | loss first -> last | grad norm |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        cells = lambda r: [_num(r.get("tokens_per_s")), _ratio(r.get("ratio")), _ratio(r.get("ratio_unsloth")),  # noqa: E731
                           _mem(r), _num(r.get("mfu"), "{:.1%}"), _first_step(r), _loss(r),
                           _num(r.get("grad_norm"), "{:.3g}")]  # fmt: skip
    for r in rows:
        status = _status(r)
        values = [status] + [""] * (lines[-2].count("|") - 3) if status else cells(r)
        lines.append("| " + " | ".join([r["system"], *values]) + " |")
    return [*lines, ""]


def _first_step(row: dict[str, Any]) -> str:
    """The first step's seconds (compilation included, not in tokens/s), where the row has them."""
    steps = row.get("step_seconds") or []
    return _num(steps[0], "{:.1f}") if steps else ""


def render(rows: list[dict[str, Any]], include_tiny: bool = False) -> str:
    """The generated block, markers included."""
    body = [BEGIN, "## Latest harness results", "",
            "Generated by `python benchmarks/results_table.py` from `benchmarks/results.jsonl` (do not edit by "
            "hand): the latest run of each workload; ratios compare rows of that run only.", ""]  # fmt: skip
    runs = latest_runs(rows, include_tiny)
    for workload, mine in runs.items():
        body += table(workload, mine)
    if not runs:
        body += ["No harness rows yet.", ""]
    return "\n".join([*body, END])


def update(md_path: Path, block: str) -> None:
    """Replace the block between the markers, or insert it before the first ``## `` section."""
    text = md_path.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        at = text.find("\n## ")
        at = len(text) if at < 0 else at + 1
        text = text[:at] + block + "\n\n" + text[at:]
    md_path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results.jsonl"))
    ap.add_argument("--md", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--include-tiny", action="store_true", help="also --tiny rows (for checking the harness)")
    args = ap.parse_args(argv)
    update(Path(args.md), render(read_rows(args.results), args.include_tiny))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
