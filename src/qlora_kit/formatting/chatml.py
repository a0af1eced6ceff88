"""ChatML (`<|im_start|>role ... <|im_end|>`): multi-turn rows, loss on assistant turns only."""

from __future__ import annotations

from typing import Any

from qlora_kit.formatting.base import RESPONSE_MARK, PromptFormatter, RowError, Segment
from qlora_kit.registry import formatters
from qlora_kit.strict import StrictModel

ROLES = ("system", "user", "assistant")


class ChatOptions(StrictModel):
    """Options of the chat formatters."""

    messages_field: str = "messages"
    """Column holding the conversation: a list of `{role, content}` mappings."""
    system: str | None = None
    """System message prepended when a conversation has none."""


def messages_of(example: dict[str, Any], options: ChatOptions) -> list[dict[str, str]]:
    """The conversation of a row, with the default system message added when it has none.

    A row without the messages column but with Alpaca fields (instruction, optional input, output) is
    read as one user turn and one assistant turn, so Alpaca datasets work with chat formats too.
    """
    messages = example.get(options.messages_field)
    if messages is None and isinstance(example.get("instruction"), str):
        user = example["instruction"] + (f"\n\n{example['input']}" if example.get("input") else "")
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": example.get("output")},
        ]
    messages = [dict(m) for m in messages] if isinstance(messages, list) else messages
    if (
        options.system
        and isinstance(messages, list)
        and not (messages and messages[0].get("role") == "system")
    ):
        messages.insert(0, {"role": "system", "content": options.system})
    return messages


def chat_prompt_example(messages_field: str, prompt: str, history: Any) -> dict[str, Any]:
    """A conversation row whose last (assistant) turn is the response mark."""
    turns = [*map(dict, history), {"role": "user", "content": prompt}]
    return {messages_field: [*turns, {"role": "assistant", "content": RESPONSE_MARK}]}


def check_messages(messages: Any, field: str) -> None:
    """Raise :class:`RowError` unless ``messages`` is a usable conversation with an assistant turn."""
    if messages is None:
        raise RowError("missing", field)
    if not isinstance(messages, list) or not messages:
        raise RowError(f"expected a non-empty list of messages, got {type(messages).__name__}", field)
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RowError(f"expected a mapping with role and content, got {type(message).__name__}", where)
        if message.get("role") not in ROLES:
            raise RowError(f"role must be one of {', '.join(ROLES)}, got {message.get('role')!r}", where)
        content = message.get("content")
        if not isinstance(content, str):
            raise RowError(f"content must be a string, got {type(content).__name__}", where)
        if message["role"] == "assistant" and not content.strip():
            raise RowError("empty assistant content", where)
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant message to train on", field)


@formatters.register("chatml")
class ChatMLFormatter(PromptFormatter):
    """ChatML turns; each assistant's content and its `<|im_end|>` are trained, the rest is not."""

    Options = ChatOptions
    chat = True
    end_of_turn = "<|im_end|>"

    def fields(self) -> tuple[str, ...]:
        # Rows may hold Alpaca fields instead of messages, so columns are checked row by row.
        return ()

    def prompt_example(self, prompt: str, *, history: Any = (), **_: Any) -> dict[str, Any]:
        """The conversation ``history`` + a user turn with ``prompt`` + the assistant turn to generate."""
        return chat_prompt_example(self.options.messages_field, prompt, history)

    def check(self, example: dict[str, Any]) -> None:
        check_messages(messages_of(example, self.options), self.options.messages_field)

    def render(self, example: dict[str, Any]) -> list[Segment]:
        segments: list[Segment] = []
        for message in messages_of(example, self.options):
            header = f"<|im_start|>{message['role']}\n"
            if message["role"] == "assistant":
                segments += [Segment(header, False), Segment(message["content"] + "<|im_end|>", True)]
                segments.append(Segment("\n", False))
            else:
                segments.append(Segment(f"{header}{message['content']}<|im_end|>\n", False))
        # The trailing newline after the last turn is neither trained nor needed.
        return segments[:-1] if segments[-1].text == "\n" else segments
