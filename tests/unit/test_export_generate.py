"""Generation from exports: prompts tokenized exactly as training tokenized them, stop at EOS, chat turns."""

from __future__ import annotations

import pytest
import torch

from qlora_kit.errors import QloraKitError
from qlora_kit.formatting import IGNORE_INDEX, PromptFormatter, Segment, build_formatter
from qlora_kit.generation import chat, complete, prompt_ids, resolve_export_dir
from qlora_kit.registry import formatters


@formatters.register("test_gen_dolly")
class _DollyLike(PromptFormatter):
    required_fields = ("instruction", "response")
    optional_fields = ("context",)

    def render(self, example):
        prompt = f"Q: {example['instruction']}\n" + (
            f"C: {example['context']}\n" if example.get("context") else ""
        )
        return [Segment(prompt + "A:", False), Segment(" " + example["response"], True)]


def _training_prompt_length(formatter, tokenizer, row):
    encoded = formatter.encode(row, tokenizer)
    labels = encoded.labels
    return encoded.input_ids, next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


@pytest.mark.parametrize(
    ("kind", "row", "prompt", "extra"),
    [
        ("alpaca_reference", {"instruction": "Count.", "input": "", "output": "Three."}, "Count.", {}),
        ("alpaca", {"instruction": "Count.", "input": "the cat", "output": "Three."}, "Count.", {"input": "the cat"}),
        ("chatml", {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}]},
         "Hi there", {}),
        ("test_gen_dolly", {"instruction": "Why?", "context": "Sky", "response": "Because."}, "Why?", {"input": "Sky"}),
    ],
)  # fmt: skip
def test_prompt_ids_are_the_training_prompt(tokenizer, kind, row, prompt, extra):
    formatter = build_formatter(kind)
    ids, first_trained = _training_prompt_length(formatter, tokenizer, row)
    got = prompt_ids(formatter, tokenizer, formatter.prompt_example(prompt, **extra))
    assert got == ids[:first_trained]


def test_text_formatter_prompt_is_the_text(tokenizer):
    formatter = build_formatter("text")
    assert (
        prompt_ids(formatter, tokenizer, formatter.prompt_example("The cat"))
        == tokenizer("The cat")["input_ids"]
    )


def test_chat_history_is_rendered_before_the_new_turn(tokenizer):
    formatter = build_formatter("chatml")
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    row = {
        "messages": [*history, {"role": "user", "content": "More"}, {"role": "assistant", "content": "Yes."}]
    }
    encoded = formatter.encode(row, tokenizer)
    last_prompt_end = max(i for i, label in enumerate(encoded.labels) if label == IGNORE_INDEX and i > 0
                          and encoded.labels[i + 1] != IGNORE_INDEX)  # fmt: skip
    got = prompt_ids(formatter, tokenizer, formatter.prompt_example("More", history=history))
    assert got == encoded.input_ids[: last_prompt_end + 1]


class _Scripted(torch.nn.Module):
    """Generates a fixed continuation, to test the cut at the stop token."""

    def __init__(self, continuation):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuation = continuation
        self.calls = []

    def generate(self, input_ids, **kwargs):
        self.calls.append(kwargs)
        tail = torch.tensor([self.continuation] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)


def test_complete_stops_at_eos_and_pads_left(tokenizer):
    eos = tokenizer.eos_token_id
    words = tokenizer(" the cat")["input_ids"]
    model = _Scripted([*words, eos, *tokenizer(" never")["input_ids"]])
    texts = complete(model, tokenizer, [[5, 6, 7], [8]], [eos], max_new_tokens=10)
    assert texts == [" the cat", " the cat"]
    assert model.calls[0]["eos_token_id"] == [eos]
    assert model.calls[0]["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_chat_needs_a_chat_formatter(tokenizer):
    class Loaded:
        formatter = build_formatter("alpaca")
        run_cfg = type("Cfg", (), {"data": type("D", (), {"formatter": "alpaca"})})()

    with pytest.raises(QloraKitError, match="chat formatter"):
        chat(Loaded(), "hi")


def test_resolve_export_dir(tmp_path):
    with pytest.raises(QloraKitError, match="no exported model"):
        resolve_export_dir(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert resolve_export_dir(tmp_path) == (tmp_path / "adapter", "adapter")
    (tmp_path / "merged").mkdir()
    for name in ("config.json", "run_config.yaml"):
        (tmp_path / "merged" / name).write_text("{}")
    assert resolve_export_dir(tmp_path) == (tmp_path / "merged", "merged")
    assert resolve_export_dir(tmp_path, prefer="adapter") == (tmp_path / "adapter", "adapter")
