"""Checking and encoding rows through a formatter, counting what was skipped, dropped or truncated."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qlora_kit.config import DataConfig
from qlora_kit.data.sources import Rows
from qlora_kit.errors import DataError
from qlora_kit.formatting.base import PromptFormatter, RowError, TooLongError

MAX_LISTED_SKIPS = 20


@dataclass
class EncodeStats:
    """Counts of one encoding pass.

    Attributes:
        loaded: Rows read.
        skipped: Malformed rows skipped under ``skip_bad_rows``.
        skipped_examples: ``(where, field, problem)`` of the first skipped rows.
        dropped: Rows dropped while encoding, by reason.
        truncated: Kept rows cut to ``max_length``.
        eos_lost: Truncated rows whose trained EOS was cut off.
    """

    loaded: int = 0
    skipped: int = 0
    skipped_examples: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    eos_lost: int = 0


@dataclass
class Encoded:
    """Encoded rows (columns of the training dataset) and the stats of the pass."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    stats: EncodeStats = field(default_factory=EncodeStats)

    def columns(self) -> dict[str, list[Any]]:
        """``input_ids``, ``labels`` and ``length`` columns for ``datasets.Dataset.from_dict``."""
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "length": [len(x) for x in self.input_ids],
        }


def encode_rows(rows: Rows, formatter: PromptFormatter, tokenizer: Any, cfg: DataConfig) -> Encoded:
    """Check and encode every row.

    Raises:
        DataError: A malformed row (unless ``cfg.skip_bad_rows``) or a too-long row under
            ``truncation: error``, naming the file, row and field.
    """
    out = Encoded(stats=EncodeStats(loaded=len(rows.rows)))
    for row, origin in zip(rows.rows, rows.origins, strict=True):
        try:
            formatter.check(row)
            example = formatter.encode(
                row,
                tokenizer,
                train_on_inputs=cfg.train_on_inputs,
                max_length=cfg.max_length,
                truncation=cfg.truncation,
            )
        except TooLongError as exc:  # the user asked for a failure here; skipping would hide it
            raise DataError(f"{origin}: {exc}") from None
        except RowError as exc:
            if cfg.skip_bad_rows:
                _record_skip(out.stats, origin, exc.field or "", str(exc))
                continue
            where = f"field {exc.field!r}: " if exc.field else ""
            hint = " (data.skip_bad_rows or --skip-bad-rows skips and counts such rows)"
            raise DataError(f"{origin}: {where}{exc}{hint}") from None
        if example.dropped:
            out.stats.dropped[example.drop_reason or "dropped"] += 1
            continue
        out.stats.truncated += example.truncated
        out.stats.eos_lost += example.eos_lost
        out.input_ids.append(example.input_ids)
        out.labels.append(example.labels)
    return out


def _record_skip(stats: EncodeStats, origin: str, field_name: str, problem: str) -> None:
    stats.skipped += 1
    if len(stats.skipped_examples) < MAX_LISTED_SKIPS:
        stats.skipped_examples.append((origin, field_name, problem))


def require_trainable(encoded: Encoded, name: str) -> None:
    """Fail before training when nothing is left to train on, saying where the rows went."""
    stats = encoded.stats
    if encoded.input_ids:
        return
    dropped = ", ".join(f"{n} {reason}" for reason, n in stats.dropped.items()) or "none"
    raise DataError(
        f"{name}: no trainable rows left: {stats.loaded} loaded, {stats.skipped} skipped as malformed, "
        f"dropped: {dropped}. Every label would be masked; check data.max_length, data.truncation and the "
        "formatter"
    )
