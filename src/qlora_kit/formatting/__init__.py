"""Prompt formatters: the base contract and the built-in templates (registered on import).

Build the configured one with :func:`build_formatter`::

    formatter = build_formatter(cfg.data.formatter)
"""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting import alpaca, chat_template, chatml, text  # noqa: F401  (registers built-ins)
from qlora_kit.formatting.base import RESPONSE_MARK, EncodedExample, PromptFormatter, RowError, Segment
from qlora_kit.formatting.tokens import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "PromptFormatter",
    "RESPONSE_MARK",
    "RowError",
    "Segment",
    "build_formatter",
]


def build_formatter(spec: Any, tokenizer: Any = None) -> PromptFormatter:
    """The formatter a `data.formatter` section names, bound to ``tokenizer`` when given.

    Args:
        spec: The validated section, a mapping ``{kind: ..., <options>}`` or a kind name.
        tokenizer: For formats that render with the tokenizer (`chat_template`).

    Raises:
        ConfigError: Unknown kind or invalid options, at `data.formatter`.
    """
    from qlora_kit.errors import ConfigError
    from qlora_kit.registry import formatters

    try:
        config = formatters.validate(spec, default_kind="alpaca")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise ConfigError([("data.formatter", str(exc))]) from None
    formatter = config.build()
    return formatter.bind(tokenizer) if tokenizer is not None else formatter
