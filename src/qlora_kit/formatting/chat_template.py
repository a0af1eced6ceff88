"""The tokenizer's own chat template, with a loss on assistant turns only.

Most templates have no ``{% generation %}`` markers, so the assistant spans are found by rendering
the conversation prefix by prefix: the text a turn adds to the rendering is that turn's segment, and
for an assistant turn the generation prompt (e.g. ``<|im_start|>assistant\\n``) is split off as
untrained. This needs a template whose rendering of a prefix is a prefix of the full rendering, which
holds for the common templates; one that is not fails loudly rather than mislabelling tokens.
"""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting.base import PromptFormatter, RowError, Segment
from qlora_kit.formatting.chatml import (
    ChatOptions,
    chat_prediction_example,
    chat_prompt_example,
    check_messages,
    messages_of,
)
from qlora_kit.registry import formatters


@formatters.register("chat_template")
class ChatTemplateFormatter(PromptFormatter):
    """Renders with ``tokenizer.apply_chat_template``; needs the tokenizer, given by :meth:`bind`."""

    Options = ChatOptions
    chat = True
    end_of_turn = "<|im_end|>"  # ChatML-style templates (SmolLM2, Qwen); ignored when not one token

    def __init__(self, options: Any = None, tokenizer: Any = None):
        super().__init__(options)
        self.tokenizer = tokenizer

    def bind(self, tokenizer: Any) -> ChatTemplateFormatter:
        """Use ``tokenizer``'s chat template (``encode`` binds its tokenizer automatically)."""
        if not getattr(tokenizer, "chat_template", None):
            raise RowError("the tokenizer has no chat template; use the `chatml` formatter instead")
        self.tokenizer = tokenizer
        return self

    def fields(self) -> tuple[str, ...]:
        # Rows may hold Alpaca fields instead of messages, so columns are checked row by row.
        return ()

    def prompt_example(self, prompt: str, *, history: Any = (), **_: Any) -> dict[str, Any]:
        """The conversation ``history`` + a user turn with ``prompt`` + the assistant turn to generate."""
        return chat_prompt_example(self.options, prompt, history)

    def prediction_example(self, row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The conversation up to its last user turn, and the assistant turn after it (if any)."""
        return chat_prediction_example(row, self.options)

    def check(self, example: dict[str, Any]) -> None:
        check_messages(messages_of(example, self.options), self.options)

    def encode(self, example: dict[str, Any], tokenizer: Any, **kwargs: Any):  # type: ignore[override]
        if self.tokenizer is not tokenizer:
            self.bind(tokenizer)
        return super().encode(example, tokenizer, **kwargs)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # a template raises for conversations it does not accept
            raise RowError(f"the chat template rejected the conversation: {exc}") from exc

    def render(self, example: dict[str, Any]) -> list[Segment]:
        if self.tokenizer is None:
            raise RowError("chat_template needs a tokenizer: call bind(tokenizer) first")
        messages = messages_of(example, self.options)
        segments: list[Segment] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                header = self._render(messages[:i], generation_prompt=True) if i else ""
                segments.append(Segment(self._added(done, header, i), False))
                done = header
            full = self._render(messages[: i + 1])
            turn = self._added(done, full, i)
            if message["role"] == "assistant":
                # Trailing whitespace after the end-of-turn marker is layout, not something to learn.
                body = turn.rstrip()
                segments += [Segment(body, True), Segment(turn[len(body) :], False)]
            else:
                segments.append(Segment(turn, False))
            done = full
        # Layout after the last turn is not learned; EOS follows the end-of-turn marker directly.
        while segments and not segments[-1].trained and not segments[-1].text.strip():
            segments.pop()
        return [s for s in segments if s.text]

    @staticmethod
    def _added(before: str, after: str, index: int) -> str:
        if not after.startswith(before):
            raise RowError(
                f"the chat template's rendering of messages[:{index + 1}] does not extend the rendering of "
                "the messages before it, so assistant tokens cannot be located; use the `chatml` formatter "
                "or a template with stable prefixes"
            )
        return after[len(before) :]
