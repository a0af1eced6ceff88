"""Prompt formatters: the base contract and the built-in templates (registered on import).

Build the configured one with :func:`build_formatter`::

    formatter = build_formatter(cfg.data.formatter)
"""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting import alpaca, chat_template, chatml, text  # noqa: F401  (registers built-ins)
from qlora_kit.formatting.base import EncodedExample, PromptFormatter, RowError, Segment
from qlora_kit.formatting.tokens import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "PromptFormatter",
    "RowError",
    "Segment",
    "build_formatter",
]


def build_formatter(spec: Any) -> PromptFormatter:
    """The registered formatter named by ``spec.kind``, built with its validated ``spec.options``.

    Args:
        spec: A :class:`~qlora_kit.config.FormatterSpec` (or anything with ``kind`` and ``options``).

    Raises:
        ConfigError: Unknown kind or invalid options.
    """
    from qlora_kit.errors import ConfigError
    from qlora_kit.registry import formatters

    try:
        cls = formatters.get(spec.kind)
        options = formatters.validate_options(spec.kind, dict(spec.options))
    except ValueError as exc:
        raise ConfigError([("data.formatter", str(exc))]) from None
    return cls(options)
