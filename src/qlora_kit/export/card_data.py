"""What a model card says about the data and the training, from the objects ``recipe.run`` has (a
:class:`~qlora_kit.data.DataReport`, a :class:`~qlora_kit.training.TrainResult`) or, for an export made
later (``qlora-kit export``), from the files the run left in its output directory."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATA_REPORT_FILE = "data_report.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
_TRAIN_FIELDS = (
    "train_loss", "eval_loss", "eval_perplexity", "steps", "epochs", "tokens", "supervised_tokens",
    "train_time_s", "stopped_early",
)  # fmt: skip


def data_summary(report: Any) -> dict[str, Any] | None:
    """A :class:`~qlora_kit.data.DataReport` (or its ``data_report.json`` dict) as plain data; None stays None."""
    if report is None:
        return None
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def train_summary(result: Any) -> dict[str, Any] | None:
    """The final numbers of a :class:`~qlora_kit.training.TrainResult` (or a dict with its field names,
    e.g. ``summary.json``): losses, steps, epochs, tokens, time. None stays None."""
    if result is None:
        return None
    values = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    if "train_time_s" not in values and "train_seconds" in values:  # summary.json's name for it
        values["train_time_s"] = values["train_seconds"]
    return {name: values.get(name) for name in _TRAIN_FIELDS}


def run_summaries(output_dir: str | Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(data_summary, train_summary)`` read from a run's output directory: ``data_report.json``, and
    ``metrics.jsonl`` (or ``summary.json``). Either is None when its file is missing or unreadable."""
    output_dir = Path(output_dir)
    data = _read_json(output_dir / DATA_REPORT_FILE)
    train = _train_from_metrics(output_dir / METRICS_FILE)
    if train is None:
        train = train_summary(_read_json(output_dir / SUMMARY_FILE))
    return data, train


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        logger.warning("model card: cannot read %s (%s); that section is left out", path, exc)
        return None


def _train_from_metrics(path: Path) -> dict[str, Any] | None:
    """The last train and eval records of ``metrics.jsonl`` as a train summary (what TrainResult holds)."""
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    if not train:
        return None
    last = train[-1]
    return train_summary({
        "train_loss": last["loss"],
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "eval_perplexity": evals[-1].get("eval_perplexity") if evals else None,
        "steps": max(r.get("step", 0) for r in records),
        "epochs": last.get("epoch"),
        "tokens": last.get("tokens"),
        "supervised_tokens": last.get("supervised_tokens"),
    })  # fmt: skip


def prompt_template(formatter_spec: Any, tokenizer: Any = None) -> list[str]:
    """The formatter's template rendered with ``{field}`` placeholders, untrained text inside
    ``[MASKED]...[/MASKED]``: one rendering per distinct template (Alpaca has a with-input and a
    no-input one). Empty when the formatter cannot render placeholders (e.g. it needs a tokenizer)."""
    from qlora_kit.formatting import build_formatter

    try:
        formatter = build_formatter(formatter_spec)
        if hasattr(formatter, "bind"):
            if tokenizer is None:
                return []
            formatter.bind(tokenizer)
    except Exception as exc:  # a plugin formatter missing here: the card just has no template
        logger.warning("model card: cannot build formatter %s (%s)", formatter_spec.kind, exc)
        return []
    fields = ("instruction", "input", "output", *formatter.required_fields, *formatter.optional_fields)
    full = {name: f"{{{name}}}" for name in fields}
    required = {name: value for name, value in full.items() if name not in formatter.optional_fields}
    renderings: list[str] = []
    for row in (full, required):
        try:
            text = "".join(
                s.text if s.trained else f"[MASKED]{s.text}[/MASKED]" for s in formatter.render(row)
            )
        except Exception:  # a formatter whose rows are not flat strings (chat messages) cannot be shown so
            continue
        if text not in renderings:
            renderings.append(text)
    return renderings


def config_for_card(run_cfg: Any) -> dict[str, Any]:
    """The resolved run config as plain data, with rows given in memory replaced by their count (the
    full config is in ``run_config.yaml``)."""
    data = run_cfg.model_dump(mode="json")
    sources = [data["data"]["source"], (data["data"].get("eval") or {}).get("source") or {}]
    for source in sources:
        if source.get("rows") is not None:
            source["rows"] = f"<{len(source['rows'])} rows given in memory>"
    return data
