"""ChatML (`<|im_start|>role ... <|im_end|>`): multi-turn rows, loss on assistant turns only.

Also the data shapes every chat formatter reads (:class:`ChatOptions`): OpenAI-style ``messages`` with
``role``/``content``, ShareGPT's ``conversations`` with ``from``/``value`` and roles ``human``/``gpt``,
or any other keys and role names. The `sharegpt` kind is ChatML with ShareGPT's keys as its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from qlora_kit.formatting.base import RESPONSE_MARK, PromptFormatter, RowError, Segment
from qlora_kit.registry import formatters
from qlora_kit.strict import StrictModel

ROLES = ("system", "user", "assistant")
Role = Literal["system", "user", "assistant"]


class ChatOptions(StrictModel):
    """Options of the chat formatters: where a row keeps its conversation, how its messages are spelled."""

    messages_field: str = "messages"
    """Column holding the conversation: a list of messages (ShareGPT: `conversations`)."""
    role_key: str = "role"
    """Key of a message's role (ShareGPT: `from`)."""
    content_key: str = "content"
    """Key of a message's text (ShareGPT: `value`)."""
    roles: dict[str, Role] = Field(default_factory=lambda: {"human": "user", "gpt": "assistant"})
    """The data's role names mapped to system/user/assistant (those three are always understood);
    ShareGPT's `human` and `gpt` by default."""
    system: str | None = None
    """System message prepended when a conversation has none."""
    system_field: str | None = None
    """Column holding a row's own system message, used when its conversation has none (ShareGPT: `system`)."""

    @model_validator(mode="after")
    def _standard_roles_keep_their_meaning(self) -> ChatOptions:
        moved = [f"{name} -> {role}" for name, role in self.roles.items() if name in ROLES and name != role]
        if moved:
            raise ValueError(f"roles: {', '.join(moved)}: system, user and assistant cannot be renamed")
        return self


class ShareGPTOptions(ChatOptions):
    """Options of the `sharegpt` formatter: the chat options with ShareGPT's names as defaults."""

    messages_field: str = "conversations"
    """Column holding the conversation."""
    role_key: str = "from"
    """Key of a message's role."""
    content_key: str = "value"
    """Key of a message's text."""
    system_field: str | None = "system"
    """Column holding a row's own system message, used when its conversation has none."""


def messages_of(example: dict[str, Any], options: ChatOptions) -> Any:
    """The conversation of a row as ``{role, content}`` messages with standard role names, with the row's
    or the default system message added when it has none.

    A row without the messages column but with Alpaca fields (instruction, optional input, output) is
    read as one user turn and one assistant turn, so Alpaca datasets work with chat formats too.
    Anything malformed is passed through for :func:`check_messages` to name.
    """
    messages = example.get(options.messages_field)
    if messages is None and isinstance(example.get("instruction"), str):
        user = example["instruction"] + (f"\n\n{example['input']}" if example.get("input") else "")
        messages = [
            {options.role_key: "user", options.content_key: user},
            {options.role_key: "assistant", options.content_key: example.get("output")},
        ]
    if not isinstance(messages, list):
        return messages
    messages = [_standard(m, options) if isinstance(m, Mapping) else m for m in messages]
    system = options.system
    if options.system_field and isinstance(example.get(options.system_field), str):
        system = example[options.system_field] or system
    if system and not (messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _standard(message: Mapping[str, Any], options: ChatOptions) -> dict[str, Any]:
    role = message.get(options.role_key)
    role = options.roles.get(role, role) if isinstance(role, str) else role
    return {"role": role, "content": message.get(options.content_key)}  # an unknown role stays as it is


def row_messages(messages: Any, options: ChatOptions) -> list[dict[str, Any]]:
    """``{role, content}`` messages in the data's own shape (``role_key``/``content_key``)."""
    return [{options.role_key: m["role"], options.content_key: m["content"]} for m in messages]


def chat_prompt_example(options: ChatOptions, prompt: str, history: Any) -> dict[str, Any]:
    """A conversation row whose last (assistant) turn is the response mark."""
    turns = [*map(dict, history), {"role": "user", "content": prompt}]
    return {
        options.messages_field: row_messages(
            [*turns, {"role": "assistant", "content": RESPONSE_MARK}], options
        )
    }


def chat_prediction_example(
    example: dict[str, Any], options: ChatOptions
) -> tuple[dict[str, Any], str | None]:
    """The row's conversation up to its last user turn, to be answered; the reference answer is the
    assistant turn after it (None when the conversation ends with the user)."""
    messages = messages_of(example, options)
    if not isinstance(messages, list):
        check_messages(messages, options)  # raises: missing, or not a list

    def last_role() -> Any:
        return messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None

    answer = messages.pop()["content"] if last_role() == "assistant" else None
    if last_role() != "user":
        raise RowError("no user turn to answer at the end of the conversation", options.messages_field)
    turns = [*messages, {"role": "assistant", "content": RESPONSE_MARK}]
    check_messages(turns, options)
    answer = answer if isinstance(answer, str) and answer.strip() else None
    return {options.messages_field: row_messages(turns, options)}, answer


def check_messages(messages: Any, options: ChatOptions) -> None:
    """Raise :class:`RowError` unless ``messages`` (:func:`messages_of`'s result) is a usable conversation
    with an assistant turn; the row's own keys and role names are named."""
    field = options.messages_field
    if messages is None:
        raise RowError("missing", field)
    if not isinstance(messages, list) or not messages:
        raise RowError(f"expected a non-empty list of messages, got {type(messages).__name__}", field)
    known = ", ".join([*ROLES, *(name for name in options.roles if name not in ROLES)])
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RowError(
                f"expected a mapping with {options.role_key} and {options.content_key}, "
                f"got {type(message).__name__}",
                where,
            )
        if message.get("role") not in ROLES:
            raise RowError(
                f"{options.role_key} must be one of {known}, got {message.get('role')!r} "
                "(map it with `roles`)",
                where,
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise RowError(f"{options.content_key} must be a string, got {type(content).__name__}", where)
        if message["role"] == "assistant" and not content.strip():
            raise RowError(f"empty assistant {options.content_key}", where)
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
        return chat_prompt_example(self.options, prompt, history)

    def prediction_example(self, row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The conversation up to its last user turn, and the assistant turn after it (if any)."""
        return chat_prediction_example(row, self.options)

    def check(self, example: dict[str, Any]) -> None:
        check_messages(messages_of(example, self.options), self.options)

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


@formatters.register("sharegpt")
class ShareGPTFormatter(ChatMLFormatter):
    """ShareGPT rows (`conversations` of `from`/`value`, roles human/gpt/system) in ChatML turns."""

    Options = ShareGPTOptions
