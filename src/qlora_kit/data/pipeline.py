"""``build_datasets``: source -> subset -> held-out split -> checked, encoded rows -> report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_kit.config import DataConfig, TrainConfig
from qlora_kit.data.encode import Encoded, encode_rows, require_trainable
from qlora_kit.data.report import DataReport, batching_efficiency, show_labels
from qlora_kit.data.sampling import length_grouped_order
from qlora_kit.data.sources import Rows, check_columns, load_source, split_indices, subset_indices
from qlora_kit.formatting.base import PromptFormatter
from qlora_kit.formatting.tokens import IGNORE_INDEX

DEFAULT_MICRO_BATCH = TrainConfig.model_fields["micro_batch_size"].default


@dataclass
class DataBundle:
    """What :func:`build_datasets` returns.

    Attributes:
        train: ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``length`` columns.
        eval: The same for held-out data, or None.
        report: What the pipeline did (:class:`~qlora_kit.data.report.DataReport`).
    """

    train: Any
    eval: Any
    report: DataReport


def build_datasets(
    data_cfg: DataConfig,
    formatter: PromptFormatter,
    tokenizer: Any,
    *,
    micro_batch_size: int = DEFAULT_MICRO_BATCH,
    output_dir: str | Path | None = None,
) -> DataBundle:
    """Load, subset, split, check and encode the data, and report on it.

    Args:
        data_cfg: The ``data`` config section.
        formatter: Renders rows (``build_formatter(data_cfg.formatter)``).
        tokenizer: The model's tokenizer.
        micro_batch_size: Rows per forward pass (``train.micro_batch_size``), for the efficiency figures.
        output_dir: When given, the report is written there (data_report.json/.txt, data_lengths.png).

    Raises:
        DataError: Unloadable data, a malformed row (unless ``skip_bad_rows``), or nothing to train on.
    """
    import datasets

    start = time.perf_counter()
    rows = load_source(data_cfg.source)
    source_rows = len(rows.rows)
    if data_cfg.subset is not None:
        rows = rows.take(subset_indices(len(rows.rows), data_cfg.subset.n, data_cfg.subset.seed))
    selected = len(rows.rows)
    rows, eval_rows = _split(rows, data_cfg)
    check_columns(rows, formatter.fields())
    train = encode_rows(rows, formatter, tokenizer, data_cfg)
    require_trainable(train, rows.name)
    evaluation = None
    if eval_rows is not None:
        check_columns(eval_rows, formatter.fields())
        evaluation = encode_rows(eval_rows, formatter, tokenizer, data_cfg)
        require_trainable(evaluation, f"{eval_rows.name} (eval)")
    report = _report(rows.name, train, evaluation, data_cfg, formatter, tokenizer, micro_batch_size)
    report.seconds = round(time.perf_counter() - start, 3)
    # the rows read and selected, not only those left for training after the held-out split
    report.source_rows, report.subset_rows = source_rows, selected if data_cfg.subset is not None else None
    report.eval_from_source = data_cfg.eval is None or data_cfg.eval.source is None
    if output_dir is not None:
        report.write(output_dir)
    return DataBundle(
        train=datasets.Dataset.from_dict(train.columns()),
        eval=datasets.Dataset.from_dict(evaluation.columns()) if evaluation else None,
        report=report,
    )


def _split(rows: Rows, cfg: DataConfig) -> tuple[Rows, Rows | None]:
    if cfg.eval is None:
        return rows, None
    if cfg.eval.source is not None:
        return rows, load_source(cfg.eval.source)
    train_idx, eval_idx = split_indices(len(rows.rows), cfg.eval.fraction, cfg.eval.seed)
    return rows.take(train_idx), rows.take(eval_idx)


def batching_name(cfg: DataConfig) -> str:
    """The configured batching strategy, as named in the report."""
    if cfg.packing is True or (cfg.packing == "auto" and cfg.padding == "longest"):
        return "packing"  # `auto` falls back to padding for attention that cannot isolate examples
    return f"padding: {cfg.padding}"


def _report(
    name: str,
    train: Encoded,
    evaluation: Encoded | None,
    cfg: DataConfig,
    formatter: PromptFormatter,
    tokenizer: Any,
    micro_batch_size: int,
) -> DataReport:
    lengths = [len(ids) for ids in train.input_ids]
    supervised = [sum(x != IGNORE_INDEX for x in labels) for labels in train.labels]
    order = (
        length_grouped_order(lengths, micro_batch_size, seed=0)
        if cfg.group_by_length
        else list(range(len(lengths)))
    )
    eos = tokenizer.eos_token_id
    stats = train.stats
    return DataReport(
        source=name,
        formatter=_formatter_name(formatter),
        max_length=cfg.max_length,
        truncation=cfg.truncation,
        batching=batching_name(cfg),
        micro_batch_size=micro_batch_size,
        rows_loaded=stats.loaded,
        rows_kept=len(lengths),
        rows_skipped=stats.skipped,
        rows_dropped=dict(stats.dropped),
        rows_truncated=stats.truncated,
        eos_lost=stats.eos_lost,
        eval_rows=len(evaluation.input_ids) if evaluation else None,
        lengths=lengths,
        tokens=sum(lengths),
        supervised_tokens=sum(supervised),
        zero_supervised_rows=sum(n for r, n in stats.dropped.items() if r != "longer than max_length"),
        eos_trained_rows=sum(1 for labels in train.labels if eos is not None and labels[-1] == eos),
        pad_is_eos=tokenizer.pad_token_id is not None and tokenizer.pad_token_id == eos,
        efficiency=batching_efficiency(lengths, supervised, order, micro_batch_size, cfg.max_length),
        example=show_labels(train.input_ids[0], train.labels[0], tokenizer),
        skipped_examples=stats.skipped_examples,
    )


def _formatter_name(formatter: PromptFormatter) -> str:
    return getattr(formatter.options, "kind", None) or type(formatter).__name__
