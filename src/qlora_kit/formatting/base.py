"""The PromptFormatter contract: subclasses render an example into segments; the base class owns
tokenization, label masking, BOS/EOS and truncation, so every formatter gets them right. A formatter
also carries its own behaviour at generation time: where a prompt goes in a row
(:meth:`PromptFormatter.prompt_example`), which tokens end a reply (:meth:`~PromptFormatter.stop_token_ids`)
and whether it needs the tokenizer (:meth:`~PromptFormatter.bind`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from qlora_kit.formatting.tokens import IGNORE_INDEX, tokenizer_info

Truncation = Literal["truncate", "drop", "error"]

RESPONSE_MARK = "<<qlora_kit:response>>"
"""Stands in for the response while rendering a prompt for generation; everything from it on is cut."""


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered example: its text, and whether the loss is computed on its tokens."""

    text: str
    trained: bool


class RowError(ValueError):
    """A row the formatter cannot use. ``field`` names the offending field (None: the whole row)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class TooLongError(RowError):
    """An example longer than ``max_length`` under ``truncation="error"``."""


@dataclass
class EncodedExample:
    """One tokenized example. ``labels`` is aligned with ``input_ids``; -100 marks untrained tokens.

    Attributes:
        input_ids: Token ids, BOS (if the tokenizer uses one) first and EOS last unless truncated.
        labels: Same length as ``input_ids``; the token id where the loss applies, else -100.
        truncated: The example was longer than ``max_length`` and was cut.
        eos_lost: Truncation cut the trained EOS off the end.
        dropped: The example cannot be used (too long under ``drop``, or nothing left to train on).
        drop_reason: Why it was dropped.
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    truncated: bool = False
    eos_lost: bool = False
    dropped: bool = False
    drop_reason: str | None = None

    @property
    def supervised(self) -> int:
        """Number of tokens the loss is computed on."""
        return sum(label != IGNORE_INDEX for label in self.labels)


class PromptFormatter:
    """Base class of prompt templates. Override :meth:`render`; register with
    ``@formatters.register("name")`` from :mod:`qlora_kit.registry`; options go in a nested ``Options``
    model (subclass :class:`qlora_kit.strict.StrictModel` so its attribute docstrings document them).

    ``required_fields`` must be present, strings and non-empty; ``optional_fields`` may be missing or
    None but must be strings otherwise. Formatters whose rows are not flat strings (chat messages)
    override :meth:`check` as well. A chat format sets ``chat = True`` and overrides
    :meth:`prompt_example`; one whose assistant turns end with their own token sets ``end_of_turn``
    (e.g. ``"<|im_end|>"``), so generation stops there.
    """

    Options: ClassVar[type[BaseModel] | None] = None
    required_fields: ClassVar[tuple[str, ...]] = ()
    optional_fields: ClassVar[tuple[str, ...]] = ()
    end_of_turn: ClassVar[str | None] = None
    chat: ClassVar[bool] = False
    """Rows are conversations: generation can continue a history (``qlora-kit generate --chat``)."""

    def __init__(self, options: BaseModel | Mapping[str, Any] | None = None):
        if isinstance(options, BaseModel):
            self.options = options
        else:  # constructed in Python: validate like a config (the registered Config has `kind`)
            model = getattr(type(self), "Config", None) or self.Options
            self.options = model.model_validate(dict(options or {})) if model else None

    # ---------------------------------------------------------------------- generation behaviour

    def bind(self, tokenizer: Any) -> PromptFormatter:
        """Give the formatter the tokenizer, for formats that render with it (a no-op here)."""
        return self

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Token ids that end a reply: the tokenizer's EOS, and ``end_of_turn`` when it is a single
        token of the vocabulary."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        if self.end_of_turn:
            end = tokenizer.convert_tokens_to_ids(self.end_of_turn)
            if isinstance(end, int) and end != tokenizer.unk_token_id and end not in ids:
                ids.append(end)
        return ids

    def prompt_example(
        self,
        prompt: str,
        *,
        input: str | None = None,
        history: Sequence[Mapping[str, str]] = (),
        fields: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A row whose response is :data:`RESPONSE_MARK`, for generating a reply to ``prompt``.

        This default suits instruction formats: the prompt goes in the first required field, ``input``
        in an `input`/`context` field, the mark in the other required fields, ``fields`` on top; a
        one-field format gets the prompt followed by the mark. Chat formats put ``history`` and the
        prompt in turns.
        """
        required = tuple(self.required_fields)
        if len(required) == 1:
            return {required[0]: prompt + RESPONSE_MARK}
        example: dict[str, Any] = {name: RESPONSE_MARK for name in required}
        if required:
            example[required[0]] = prompt
        for name in ("input", "context"):
            if name in required or name in self.optional_fields:
                example[name] = input or ""
        example.update(fields or {})
        return example

    def prediction_example(self, row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """A data row made into a prompt for ``qlora-kit predict``/``eval``, and its reference answer.

        This default suits instruction formats: the fields :meth:`prompt_example` fills with the mark are
        the response; the row's value there (if any) is the reference. A one-field format continues the
        row's text (no reference). Chat formats answer the conversation's last user turn.

        Raises:
            RowError: the row cannot be a prompt (a missing or non-string prompt field, named).
        """
        if len(self.required_fields) == 1:
            self.check(row)
            name = self.required_fields[0]
            return {**row, name: row[name] + RESPONSE_MARK}, None
        marked = [name for name, value in self.prompt_example("").items() if value == RESPONSE_MARK]
        example = {**row, **dict.fromkeys(marked, RESPONSE_MARK)}
        self.check(example)
        answer = row.get(marked[0]) if len(marked) == 1 else None
        return example, answer if isinstance(answer, str) and answer.strip() else None

    # ----------------------------------------------------------------------------- training

    def render(self, example: dict[str, Any]) -> list[Segment]:
        """Turn one row into segments (prompt untrained, response trained)."""
        raise NotImplementedError

    def fields(self) -> tuple[str, ...]:
        """Columns this formatter reads (checked against the dataset's columns before encoding)."""
        return self.required_fields

    def check(self, example: dict[str, Any]) -> None:
        """Raise :class:`RowError` naming the field if ``example`` cannot be rendered."""
        for name in self.required_fields:
            value = example.get(name)
            if value is None:
                raise RowError("missing", name)
            if not isinstance(value, str):
                raise RowError(f"expected a string, got {type(value).__name__}", name)
            if not value.strip():
                raise RowError("empty", name)
        for name in self.optional_fields:
            value = example.get(name)
            if value is not None and not isinstance(value, str):
                raise RowError(f"expected a string, got {type(value).__name__}", name)

    def encode(
        self,
        example: dict[str, Any],
        tokenizer: Any,
        *,
        train_on_inputs: bool = False,
        max_length: int = 1024,
        truncation: Truncation = "truncate",
    ) -> EncodedExample:
        """Render, tokenize and label one example.

        Segments are tokenized one by one, so a label boundary is always a token boundary. BOS is
        prepended only when the tokenizer's own post-processor would add one and the text does not
        already start with it; EOS is appended (unless the text already ends with it) and trained.
        The first token is never a label: nothing precedes it to predict it from, and masking it keeps
        packed rows (where it would be predicted from the previous example) identical to padded ones.

        Args:
            example: One row.
            tokenizer: A Hugging Face tokenizer.
            train_on_inputs: Train on prompt tokens too.
            max_length: Longest allowed example in tokens.
            truncation: ``truncate`` keeps the first ``max_length`` tokens (the prompt, then as much of
                the response as fits); ``drop`` marks the example dropped; ``error`` raises RowError.

        Raises:
            RowError: The row is malformed; TooLongError when too long under ``truncation="error"``.
        """
        segments = self.render(example)
        _check_segments(segments, type(self).__name__)
        info = tokenizer_info(tokenizer)
        ids: list[int] = []
        labels: list[int] = []
        for i, segment in enumerate(segments):
            tokens = info.encode_segment(tokenizer, segment.text, first=i == 0)
            ids += tokens
            labels += tokens if (segment.trained or train_on_inputs) else [IGNORE_INDEX] * len(tokens)
        if info.needs_bos(ids):
            ids.insert(0, info.bos_id)
            labels.insert(0, IGNORE_INDEX)
        if info.eos_id is not None:
            if ids and ids[-1] == info.eos_id:
                labels[-1] = info.eos_id
            else:
                ids.append(info.eos_id)
                labels.append(info.eos_id)
        if labels:
            labels[0] = IGNORE_INDEX
        return _apply_truncation(EncodedExample(ids, labels), max_length, truncation, info.eos_id)


def _check_segments(segments: Any, owner: str) -> None:
    if not isinstance(segments, list) or not segments:
        raise TypeError(f"{owner}.render must return a non-empty list of Segment, got {segments!r}")
    for segment in segments:
        if not isinstance(segment, Segment) or not isinstance(segment.text, str):
            raise TypeError(
                f"{owner}.render returned {segment!r}; expected Segment(text: str, trained: bool)"
            )


def _apply_truncation(
    encoded: EncodedExample, max_length: int, truncation: Truncation, eos_id: int | None
) -> EncodedExample:
    length = len(encoded.input_ids)
    if length > max_length:
        if truncation == "error":
            raise TooLongError(f"{length} tokens > max_length {max_length} (data.truncation is 'error')")
        if truncation == "drop":
            return EncodedExample(dropped=True, drop_reason="longer than max_length")
        had_eos = eos_id is not None and encoded.labels[-1] == eos_id
        encoded = EncodedExample(
            encoded.input_ids[:max_length],
            encoded.labels[:max_length],
            truncated=True,
            eos_lost=had_eos,
        )
    if encoded.supervised == 0:
        reason = "prompt fills max_length" if encoded.truncated else "no trained tokens"
        return EncodedExample(
            truncated=encoded.truncated, eos_lost=encoded.eos_lost, dropped=True, drop_reason=reason
        )
    return encoded
