"""Prompt formatters: the base contract and the built-in templates (registered on import)."""

from qlora_kit.formatting import alpaca  # noqa: F401  (registers built-ins)
from qlora_kit.formatting.base import PromptFormatter, Segment

__all__ = ["PromptFormatter", "Segment"]
