"""Plain-text rendering of :class:`~qlora_kit.data.report.DataReport`."""

from __future__ import annotations

from typing import Any

DataReport = Any
"""A :class:`~qlora_kit.data.report.DataReport` (not imported: that module imports this one)."""

BAR_WIDTH = 40


def render_text(r: DataReport) -> str:
    """The report as aligned text sections."""
    lines = [
        f"data report: {r.source}",
        f"  formatter {r.formatter}, max_length {r.max_length}, truncation {r.truncation}, "
        f"batching {r.batching}, micro batch {r.micro_batch_size}; prepared in {r.seconds:.2f} s",
        "",
        "rows",
        *_rows_read(r),
        f"  kept        {r.rows_kept:>9,}",
        f"  skipped     {r.rows_skipped:>9,}  (malformed, skip_bad_rows)",
    ]
    for reason, n in r.rows_dropped.items():
        lines.append(f"  dropped     {n:>9,}  ({reason})")
    lines.append(f"  truncated   {r.rows_truncated:>9,}  ({r.eos_lost:,} lost their EOS)")
    for origin, field, problem in r.skipped_examples:
        lines.append(f"    skipped {origin}: {field or 'row'}: {problem}")
    lines += ["", *_supervision(r), "", *_histogram(r), "", *_efficiency(r), ""]
    lines += ["first example (untrained tokens inside [MASKED]...[/MASKED]):", r.example, ""]
    return "\n".join(lines)


def _rows_read(r: DataReport) -> list[str]:
    """Rows in the source, the subset, the held-out split and what is left for training."""
    lines = []
    if r.source_rows is not None:
        lines.append(f"  in source   {r.source_rows:>9,}  ({r.source})")
    if r.subset_rows is not None:
        lines.append(f"  subset      {r.subset_rows:>9,}  (data.subset)")
    if r.eval_rows is not None:
        if r.eval_from_source:
            lines.append(
                f"  held out    {r.held_out_rows:>9,}  (data.eval; {r.eval_rows:,} kept for evaluation)"
            )
        else:
            lines.append(f"  eval rows   {r.eval_rows:>9,}  (kept, from data.eval.source)")
    lines.append(f"  for training{r.rows_loaded:>9,}")
    return lines


def _supervision(r: DataReport) -> list[str]:
    fraction = r.supervised_tokens / r.tokens if r.tokens else 0.0
    return [
        "tokens",
        f"  tokens             {r.tokens:>11,}",
        f"  supervised         {r.supervised_tokens:>11,}  ({fraction:.1%} of tokens)",
        f"  rows with no label {r.zero_supervised_rows:>11,}",
        f"  EOS trained        {r.eos_trained_rows:>11,} of {r.rows_kept:,} rows",
        f"  pad == eos         {'yes' if r.pad_is_eos else 'no':>11}"
        + ("  (labels come from the formatter, so EOS stays trained)" if r.pad_is_eos else ""),
    ]


def _histogram(r: DataReport) -> list[str]:
    buckets = r.histogram()
    top = max((c for _, _, c in buckets), default=0) or 1
    lines = ["token lengths"]
    for low, high, count in buckets:
        bar = "#" * round(BAR_WIDTH * count / top)
        lines.append(f"  {low:>6}-{high:<6} {count:>7,}  {bar}")
    return lines


def _efficiency(r: DataReport) -> list[str]:
    lines = [
        "batching efficiency (one epoch; real and supervised tokens as a share of computed positions)",
        f"  {'strategy':<22}{'computed':>12}{'real':>9}{'supervised':>12}",
    ]
    for name, eff in r.efficiency.items():
        mark = "  <- configured" if name == r.batching else ""
        lines.append(
            f"  {name:<22}{eff.processed:>12,}{eff.real_fraction:>9.1%}{eff.supervised_fraction:>12.1%}{mark}"
        )
    return lines
