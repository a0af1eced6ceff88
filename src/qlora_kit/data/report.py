"""The data report: what was loaded, kept, dropped and truncated, token lengths, supervision, and the
padding or packing efficiency of each batching strategy (so the gain of the faster ones is visible)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlora_kit.files import atomic_write_bytes, atomic_write_text
from qlora_kit.formatting.tokens import IGNORE_INDEX

REPORT_FILES = ("data_report.json", "data_report.txt", "data_lengths.png")


@dataclass
class Efficiency:
    """Tokens one epoch pushes through the model under a batching strategy.

    Attributes:
        processed: Token positions computed (padding included).
        real: Positions holding example tokens.
        supervised: Positions with a label.
    """

    processed: int
    real: int
    supervised: int

    @property
    def real_fraction(self) -> float:
        """Share of computed positions that are real tokens (1 - padding waste)."""
        return self.real / self.processed if self.processed else 0.0

    @property
    def supervised_fraction(self) -> float:
        """Share of computed positions that carry a label."""
        return self.supervised / self.processed if self.processed else 0.0


def batching_efficiency(
    lengths: list[int], supervised: list[int], order: list[int], micro_batch_size: int, max_length: int
) -> dict[str, Efficiency]:
    """Efficiency of `padding: max_length`, `padding: longest` (multiple of 8) and packing.

    Batches are consecutive ``micro_batch_size`` examples of ``order`` (the data order, or the
    length-grouped order when that is configured).
    """
    real, sup = sum(lengths), sum(supervised)
    longest = 0
    for start in range(0, len(order), micro_batch_size):
        batch = [lengths[i] for i in order[start : start + micro_batch_size]]
        longest += len(batch) * (-(-max(batch) // 8) * 8)
    return {
        "padding: max_length": Efficiency(len(lengths) * max_length, real, sup),
        "padding: longest": Efficiency(longest, real, sup),
        "packing": Efficiency(real, real, sup),
    }


@dataclass
class DataReport:
    """Everything the data pipeline did, for ``qlora-kit data`` and the run's output folder.

    Counts are of the training split unless named ``eval_``.
    """

    source: str
    formatter: str
    max_length: int
    truncation: str
    batching: str
    micro_batch_size: int
    rows_loaded: int
    rows_kept: int
    rows_skipped: int
    rows_dropped: dict[str, int]
    rows_truncated: int
    eos_lost: int
    eval_rows: int | None
    lengths: list[int]
    tokens: int
    supervised_tokens: int
    zero_supervised_rows: int
    eos_trained_rows: int
    pad_is_eos: bool
    efficiency: dict[str, Efficiency]
    example: str
    skipped_examples: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    source_rows: int | None = None
    """Rows in the source (the file's rows), before the subset and the held-out split."""
    subset_rows: int | None = None
    """Rows selected by ``data.subset`` (None: no subset)."""
    eval_from_source: bool = True
    """The held-out rows were split off the source (False: they come from ``data.eval.source``)."""

    def headline(self) -> str:
        """The report in one line: rows read, the split, rows kept, tokens."""
        counts = f"{self.source_rows if self.source_rows is not None else self.rows_loaded:,} rows"
        if self.subset_rows is not None:
            counts += f" (subset {self.subset_rows:,})"
        held_out = self.held_out_rows
        split = f"{self.rows_loaded:,} train" + (f", {held_out:,} eval" if held_out is not None else "")
        if self.rows_kept < self.rows_loaded or (held_out is not None and self.eval_rows < held_out):
            kept = f"{self.rows_kept:,}" + (f" and {self.eval_rows:,}" if held_out is not None else "")
            split += f"; kept {kept} (the data report says why)"
        return f"{counts} -> {split}; {self.tokens:,} tokens, {self.supervised_tokens:,} trained"

    @property
    def held_out_rows(self) -> int | None:
        """Rows split off for evaluation before encoding (the eval source's kept rows when it has its own)."""
        if self.eval_rows is None:
            return None
        selected = self.subset_rows if self.subset_rows is not None else self.source_rows
        if not self.eval_from_source or selected is None:
            return self.eval_rows
        return selected - self.rows_loaded

    def histogram(self, bins: int = 12) -> list[tuple[int, int, int]]:
        """``(low, high, count)`` buckets of the token lengths, equal width up to the longest."""
        if not self.lengths:
            return []
        top = max(self.lengths)
        width = max(1, -(-top // bins))
        counts = [0] * bins
        for n in self.lengths:
            counts[min((n - 1) // width, bins - 1)] += 1
        return [(i * width + 1, (i + 1) * width, c) for i, c in enumerate(counts)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the fields, the efficiency fractions and length statistics instead of every length."""
        data = asdict(self)
        data.pop("lengths")
        data["length_stats"] = _length_stats(self.lengths)
        data["histogram"] = self.histogram()
        for name, eff in self.efficiency.items():
            data["efficiency"][name].update(
                real_fraction=round(eff.real_fraction, 4),
                supervised_fraction=round(eff.supervised_fraction, 4),
            )
        return data

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """The report as readable text."""
        from qlora_kit.data.report_text import render_text

        return render_text(self)

    def write(self, output_dir: str | Path) -> list[Path]:
        """Write data_report.json, data_report.txt and the length histogram data_lengths.png.

        Each file is written atomically (rendered in memory first).

        Raises:
            StorageError: a file cannot be written (names it); no empty or partial file is left.
        """
        out = Path(output_dir)
        paths = [out / name for name in REPORT_FILES]
        atomic_write_text(paths[0], self.to_json() + "\n")
        atomic_write_text(paths[1], self.to_text())
        atomic_write_bytes(paths[2], _plot_lengths(self))
        return paths


def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": ordered[-1],
    }


def _plot_lengths(report: DataReport) -> bytes:
    """The token-length histogram as PNG bytes (matplotlib's Agg backend: no display needed)."""
    buffer = io.BytesIO()
    lengths_figure(report).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def length_bins(lengths: list[int], most: int = 40) -> list[float]:
    """Histogram bin edges over the lengths' own range, a whole number of tokens wide (at most ``most``
    bins), each centred on its lengths."""
    low, high = (min(lengths), max(lengths)) if lengths else (0, 1)
    width = max(1, -(-(high - low + 1) // most))
    return [low - 0.5 + i * width for i in range(-(-(high - low + 1) // width) + 1)]


def lengths_figure(report: DataReport) -> Any:
    """The token-length histogram. The x axis spans the lengths, not ``max_length``: a limit far beyond
    the longest example would squeeze the bars into hairlines; it is drawn only when in range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lengths = report.lengths or [0]
    ax.hist(lengths, bins=length_bins(lengths), color="#4C72B0", edgecolor="white", linewidth=0.5)
    limit = f"max_length {report.max_length}"
    if report.max_length <= max(lengths) * 1.1:
        ax.axvline(report.max_length, color="#C44E52", linestyle="--", label=limit)
        ax.legend()
    else:
        ax.text(0.98, 0.95, f"{limit} (longest example {max(lengths)})", transform=ax.transAxes,
                ha="right", va="top", color="#C44E52")  # fmt: skip
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(f"Token lengths ({report.rows_kept} training examples, {report.formatter})")
    fig.tight_layout()
    return fig


def show_labels(input_ids: list[int], labels: list[int], tokenizer: Any) -> str:
    """Decode an example with its untrained (label -100) spans wrapped in ``[MASKED]...[/MASKED]``."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:i])
            parts.append(f"[MASKED]{text}[/MASKED]" if labels[start] == IGNORE_INDEX else text)
            start = i
    return "".join(parts)
