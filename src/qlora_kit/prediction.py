"""Predictions and scores over a file of rows, with the formatter of the run that made the model:
``qlora-kit predict`` (each row plus the model's answer) and ``qlora-kit eval`` (loss, perplexity and
exact match against the rows' own answers)::

    loaded = load_exported("runs/quickstart")
    predict_file(loaded, "questions.jsonl", "predictions.jsonl")
    print(score_file(loaded, "held_out.jsonl").to_text())

A row is made into a prompt by the formatter
(:meth:`~qlora_kit.formatting.PromptFormatter.prediction_example`): an instruction row without its response
field, a conversation up to its last user turn. A row whose response is there too (an Alpaca ``output``, a
final assistant turn) is that row's reference answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlora_kit.decoding import Sampling, complete
from qlora_kit.errors import DataError

logger = logging.getLogger(__name__)

PREDICTION_KEY = "prediction"
"""The key each output row of :func:`predict_file` gets its prediction under."""


@dataclass
class Prompts:
    """The rows of an input file, made into prompts (:func:`read_prompts`).

    Attributes:
        name: The file.
        rows: The rows as read (written back with their predictions).
        origins: Where each row came from (``file line N``), for messages.
        examples: The rows as the formatter reads them (the run's column mapping applied).
        prompts: Each row as a prompt: its response replaced by the formatter's response mark.
        answers: Each row's reference answer, or None.
    """

    name: str
    rows: list[dict[str, Any]]
    origins: list[str]
    examples: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)

    def token_ids(self, loaded: Any) -> list[list[int]]:
        """Each prompt tokenized as in training, with the loaded run's formatter and tokenizer."""
        from qlora_kit.generation import prompt_ids

        return [prompt_ids(loaded.formatter, loaded.tokenizer, prompt) for prompt in self.prompts]


def read_prompts(path: str | Path, formatter: Any, columns: Mapping[str, str] | None = None) -> Prompts:
    """Read a json/jsonl/csv/parquet file (or a hub dataset) and make each row a prompt; needs no model, so
    a bad row fails before one is loaded.

    Args:
        path: The rows.
        formatter: The run's formatter (``build_formatter(run_cfg.data.formatter)``).
        columns: The run's ``data.source.columns`` mapping, applied to rows that have the mapped columns.

    Raises:
        DataError: the file cannot be read or is empty, or a row cannot be a prompt (file, line and field
            named).
    """
    from qlora_kit.config import SourceConfig
    from qlora_kit.data.sources import load_source
    from qlora_kit.formatting import RowError

    source = load_source(SourceConfig(path=str(path)))
    if not source.rows:
        raise DataError(f"{source.name}: no rows")
    prompts = Prompts(source.name, source.rows, source.origins)
    for row, origin in zip(source.rows, source.origins, strict=True):
        example = {**row, **{name: row[column] for name, column in (columns or {}).items() if column in row}}
        try:
            prompt, answer = formatter.prediction_example(example)
        except RowError as exc:
            where = f"field {exc.field!r}: " if exc.field else ""
            raise DataError(
                f"{origin}: {where}{exc} (a row needs what the run's formatter prompts with)"
            ) from None
        prompts.examples.append(example)
        prompts.prompts.append(prompt)
        prompts.answers.append(answer)
    return prompts


def _prompts_of(loaded: Any, path: str | Path) -> Prompts:
    """:func:`read_prompts` with the loaded run's formatter and column mapping."""
    return read_prompts(path, loaded.formatter, loaded.run_cfg.data.source.columns)


def predict_ids(
    loaded: Any,
    ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
    what: str = "predict",
) -> list[str]:
    """Completions of tokenized prompts in batches of similar length (less padding), in input order;
    progress is logged after each batch."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    stops = loaded.formatter.stop_token_ids(loaded.tokenizer)
    texts: list[str] = [""] * len(ids)
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        outs = complete(loaded.model, loaded.tokenizer, [ids[i] for i in batch], stops,
                        max_new_tokens=max_new_tokens, sampling=sampling)  # fmt: skip
        for i, text in zip(batch, outs, strict=True):
            texts[i] = text
        done = start + len(batch)
        logger.info(
            "%s: %d/%d rows (%.1f rows/s)", what, done, len(ids), done / (time.perf_counter() - started)
        )
    return texts


def predict_file(
    loaded: Any,
    rows: str | Path | Prompts,
    output_path: str | Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
) -> Path:
    """Write every row of a file with the model's answer under ``"prediction"`` to ``output_path``
    (JSON lines, written atomically: the file is complete or absent).

    Args:
        loaded: :func:`~qlora_kit.generation.load_exported`'s result.
        rows: The input file, or its :func:`read_prompts` result.
        batch_size: Prompts generated together.
        max_new_tokens: Longest answer.
        sampling: Greedy by default.

    Returns:
        ``output_path``.
    """
    from qlora_kit.files import atomic_write_text

    prompts = rows if isinstance(rows, Prompts) else _prompts_of(loaded, rows)
    texts = predict_ids(loaded, prompts.token_ids(loaded), batch_size=batch_size, max_new_tokens=max_new_tokens,
                        sampling=sampling)  # fmt: skip
    lines = [
        json.dumps({**row, PREDICTION_KEY: text}, ensure_ascii=False) + "\n"
        for row, text in zip(prompts.rows, texts, strict=True)
    ]
    return atomic_write_text(output_path, "".join(lines))


@dataclass
class Scores:
    """What :func:`score_file` measured (JSON with :meth:`to_dict`, text with :meth:`to_text`)."""

    input: str
    rows: int
    answered: int
    eval_loss: float
    eval_perplexity: float
    eval_tokens: int
    exact_match: float | None = None
    exact_matches: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain JSON values."""
        return asdict(self)

    def to_text(self) -> str:
        """A short table."""
        lines = [
            f"input        {self.input}",
            f"rows         {self.rows} ({self.answered} with a reference answer)",
            f"loss         {self.eval_loss:.4f} per answer token ({self.eval_tokens} tokens)",
            f"perplexity   {self.eval_perplexity:.4g}",
        ]
        if self.exact_match is not None:
            lines.append(f"exact match  {self.exact_match:.1%} ({self.exact_matches}/{self.answered})")
        return "\n".join(lines)


def answered_rows(prompts: Prompts) -> list[int]:
    """Indices of the rows that have a reference answer.

    Raises:
        DataError: none has.
    """
    answered = [i for i, answer in enumerate(prompts.answers) if answer is not None]
    if not answered:
        raise DataError(f"{prompts.name}: no row has a reference answer to score (e.g. `output`, or a final "
                        "assistant turn); `qlora-kit predict` writes predictions without one")  # fmt: skip
    return answered


def score_file(
    loaded: Any,
    rows: str | Path | Prompts,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    exact_match: bool = True,
) -> Scores:
    """Loss and perplexity of the model on the answers of a file's rows (encoded by the run's formatter with
    its `data` settings, as its eval split was), and the share of greedy predictions equal to them.

    Args:
        rows: The input file, or its :func:`read_prompts` result.
        exact_match: Also generate an answer for each row and compare it with the reference (whitespace
            at the ends and runs of whitespace do not count).

    Raises:
        DataError: a row cannot be a prompt, or no row has a reference answer.
    """
    from qlora_kit.data.collate import PaddedCollator
    from qlora_kit.data.encode import encode_rows
    from qlora_kit.data.sources import Rows
    from qlora_kit.formatting.tokens import pad_token_id
    from qlora_kit.training.evaluation import evaluate

    prompts = rows if isinstance(rows, Prompts) else _prompts_of(loaded, rows)
    answered = answered_rows(prompts)
    scored = Rows(
        prompts.name, [prompts.examples[i] for i in answered], [prompts.origins[i] for i in answered]
    )
    data_cfg = loaded.run_cfg.data.model_copy(update={"skip_bad_rows": False})
    encoded = encode_rows(scored, loaded.formatter, loaded.tokenizer, data_cfg)
    batch = [
        {"input_ids": i, "labels": labels}
        for i, labels in zip(encoded.input_ids, encoded.labels, strict=True)
    ]
    collate = PaddedCollator(pad_token_id=pad_token_id(loaded.tokenizer))
    metrics = evaluate(loaded.model, batch, collate, batch_size)
    scores = Scores(prompts.name, len(prompts.rows), len(answered), **metrics)
    if exact_match:
        ids = prompts.token_ids(loaded)
        texts = predict_ids(loaded, [ids[i] for i in answered], batch_size=batch_size,
                            max_new_tokens=max_new_tokens, what="eval")  # fmt: skip
        hits = sum(_same(text, prompts.answers[i]) for text, i in zip(texts, answered, strict=True))
        scores.exact_matches, scores.exact_match = hits, hits / len(answered)
    return scores


def _same(prediction: str, answer: Any) -> bool:
    return " ".join(prediction.split()) == " ".join(str(answer).split())
