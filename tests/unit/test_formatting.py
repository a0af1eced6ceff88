"""Golden label masks of every built-in formatter, BOS/EOS handling, truncation, check_formatter."""

from __future__ import annotations

import pytest

from qlora_kit.data.report import show_labels
from qlora_kit.errors import ConfigError
from qlora_kit.formatting import IGNORE_INDEX, PromptFormatter, Segment, build_formatter
from qlora_kit.formatting.base import RowError, TooLongError
from qlora_kit.formatting.tokens import tokenizer_info
from qlora_kit.testing import check_formatter, make_alpaca_rows, make_tokenizer

EOS = "<|endoftext|>"
ROW = {"instruction": "Say what the cat paints.", "input": "", "output": "The cat paints a map."}
ROW_IN = {
    "instruction": "Say what the cat paints.",
    "input": "Context: the sky.",
    "output": "The cat paints.",
}
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "A pear."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "An apple."},
    ]
}


def fmt(kind: str, **options) -> PromptFormatter:
    return build_formatter({"kind": kind, **options})


def golden(formatter: PromptFormatter, row: dict, tokenizer, **kwargs) -> str:
    enc = formatter.encode(row, tokenizer, **kwargs)
    assert len(enc.input_ids) == len(enc.labels)
    assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(enc.input_ids, enc.labels, strict=True))
    return show_labels(enc.input_ids, enc.labels, tokenizer)


def test_alpaca_reference_keeps_the_empty_input_section_verbatim(tokenizer):
    prompt = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay what the cat paints.\n\n### Input:\n\n\n### Response:\n"
    )
    assert (
        golden(fmt("alpaca_reference"), ROW, tokenizer)
        == f"[MASKED]{prompt}[/MASKED]The cat paints a map.{EOS}"
    )


def test_alpaca_uses_stanfords_two_templates(tokenizer):
    no_input = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay what the cat paints.\n\n### Response:\n"
    )
    assert golden(fmt("alpaca"), ROW, tokenizer) == f"[MASKED]{no_input}[/MASKED]The cat paints a map.{EOS}"
    with_input = golden(fmt("alpaca"), ROW_IN, tokenizer)
    assert (
        "### Input:\nContext: the sky.\n\n### Response:\n[/MASKED]The cat paints.<|endoftext|>" in with_input
    )


def test_chatml_trains_only_assistant_turns(tokenizer):
    expected = (
        "[MASKED]<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n"
        "<|im_start|>assistant\n[/MASKED]A pear.<|im_end|>[MASKED]\n<|im_start|>user\nAnother?<|im_end|>\n"
        f"<|im_start|>assistant\n[/MASKED]An apple.<|im_end|>{EOS}"
    )
    assert golden(fmt("chatml"), CHAT, tokenizer) == expected


def test_chatml_reads_alpaca_rows_and_adds_a_system_message(tokenizer):
    text = golden(fmt("chatml", system="Be kind."), ROW_IN, tokenizer)
    assert text.startswith("[MASKED]<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nSay what")
    assert text.endswith("assistant\n[/MASKED]The cat paints.<|im_end|><|endoftext|>")


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHATML_TEMPLATE
    return tok


def test_chat_template_without_generation_markers_masks_like_chatml(chat_tokenizer):
    # The template has no {% generation %} markers: spans come from prefix-by-prefix rendering.
    from_template = golden(fmt("chat_template"), CHAT, chat_tokenizer)
    assert from_template == golden(fmt("chatml"), CHAT, chat_tokenizer)


def test_chat_template_with_bos_in_the_template_has_one_bos():
    tok = make_tokenizer()
    tok.chat_template = BOS_TEMPLATE
    text = golden(fmt("chat_template"), {"messages": CHAT["messages"][1:3]}, tok)
    assert text == f"[MASKED]{EOS}[user] Name a fruit.\n[assistant] [/MASKED]A pear.{EOS}"


def test_chat_template_needs_a_template(tokenizer):
    with pytest.raises(RowError, match="no chat template"):
        fmt("chat_template").encode(CHAT, tokenizer)


def test_chat_template_that_rewrites_earlier_turns_fails_loudly():
    tok = make_tokenizer()
    # Renders only the last message: the rendering of a prefix is not a prefix of the whole.
    tok.chat_template = "{{ messages[-1]['content'] }}"
    with pytest.raises(RowError, match="stable prefixes"):
        fmt("chat_template").encode(CHAT, tok)


def test_text_formatter_trains_everything_but_the_first_token(tokenizer):
    enc = fmt("text", field="body").encode({"body": "The cat paints a map."}, tokenizer)
    assert enc.labels[0] == IGNORE_INDEX
    assert enc.labels[1:] == enc.input_ids[1:]
    assert enc.input_ids[-1] == tokenizer.eos_token_id


def test_train_on_inputs_trains_the_prompt(tokenizer):
    enc = fmt("alpaca").encode(ROW, tokenizer, train_on_inputs=True)
    assert enc.labels[1:] == enc.input_ids[1:]


def test_segments_are_tokenized_apart_so_boundaries_are_exact(tokenizer):
    enc = fmt("alpaca").encode(ROW, tokenizer)
    first_trained = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert tokenizer.decode(enc.input_ids[:first_trained]).endswith("### Response:\n")
    assert tokenizer.decode(enc.input_ids[first_trained:]) == "The cat paints a map." + EOS


def bos_tokenizer():
    """A Llama-like tokenizer: its post-processor prepends <s>, EOS is </s>."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    base = make_tokenizer()._tokenizer
    base.add_special_tokens(["<s>", "</s>"])
    bos_id = base.token_to_id("<s>")
    base.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=base, bos_token="<s>", eos_token="</s>")


def test_bos_is_added_once_when_the_tokenizer_adds_one():
    tok = bos_tokenizer()
    assert tokenizer_info(tok).adds_bos
    enc = fmt("alpaca").encode(ROW, tok)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[1] != tok.bos_token_id
    assert enc.input_ids[-1] == tok.eos_token_id == enc.labels[-1]
    with_bos = fmt("text").encode({"text": "<s>The cat."}, tok)
    assert with_bos.input_ids.count(tok.bos_token_id) == 1


def metaspace_tokenizer():
    """A SentencePiece-style tokenizer: every encode call prepends the word-boundary marker."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = [" ".join(r.values()) for r in make_alpaca_rows(200, seed=3)] + ["### Response:\n"] * 5
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_style_segments_match_whole_text_tokenization():
    tok = metaspace_tokenizer()
    assert tokenizer_info(tok).needs_anchor
    row = {"instruction": "Say what the cat paints.", "output": "The cat paints a map."}
    enc = fmt("alpaca").encode(row, tok)
    text = "".join(s.text for s in fmt("alpaca").render(row))
    assert enc.input_ids[:-1] == tok(text, add_special_tokens=False)["input_ids"]


def test_truncate_keeps_the_prompt_and_counts_the_lost_eos(tokenizer):
    full = fmt("alpaca").encode(ROW, tokenizer)
    prompt_len = full.labels.index(next(x for x in full.labels if x != IGNORE_INDEX))
    cut = fmt("alpaca").encode(ROW, tokenizer, max_length=prompt_len + 2)
    assert cut.truncated and cut.eos_lost and not cut.dropped
    assert cut.input_ids == full.input_ids[: prompt_len + 2] and cut.supervised == 2


def test_prompt_longer_than_max_length_is_dropped_not_trained(tokenizer):
    enc = fmt("alpaca").encode(ROW, tokenizer, max_length=5)
    assert enc.dropped and enc.drop_reason == "prompt fills max_length"


def test_drop_and_error_policies(tokenizer):
    assert fmt("alpaca").encode(ROW, tokenizer, max_length=10, truncation="drop").dropped
    with pytest.raises(TooLongError, match="max_length 10"):
        fmt("alpaca").encode(ROW, tokenizer, max_length=10, truncation="error")


def test_check_names_missing_non_string_and_empty_fields():
    formatter = fmt("alpaca")
    for row, field, problem in [
        ({"output": "x"}, "instruction", "missing"),
        ({"instruction": 3, "output": "x"}, "instruction", "expected a string, got int"),
        ({"instruction": "x", "output": "  "}, "output", "empty"),
        ({"instruction": "x", "output": "y", "input": ["z"]}, "input", "expected a string, got list"),
    ]:
        with pytest.raises(RowError, match=problem) as info:
            formatter.check(row)
        assert info.value.field == field


def test_chat_rows_are_checked_message_by_message():
    formatter = fmt("chatml")
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    with pytest.raises(RowError, match="role must be") as info:
        formatter.check(bad)
    assert info.value.field == "messages[1]"
    with pytest.raises(RowError, match="no assistant message"):
        formatter.check({"messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize("kind", ["alpaca_reference", "alpaca", "chatml", "text"])
def test_builtins_pass_check_formatter(kind, tokenizer):
    rows = make_alpaca_rows(6)
    if kind == "text":
        rows = [{"text": r["instruction"] + " " + r["output"]} for r in rows]
    assert check_formatter(fmt(kind), rows, tokenizer) == 6


def test_chat_template_passes_check_formatter(chat_tokenizer):
    assert check_formatter(fmt("chat_template"), [CHAT], chat_tokenizer) == 1


def test_check_formatter_reports_a_broken_formatter(tokenizer):
    class NothingTrained(PromptFormatter):
        def render(self, example):
            return [Segment(example["output"], trained=False)]

    class NotSegments(PromptFormatter):
        def render(self, example):
            return [example["output"]]

    with pytest.raises(AssertionError, match="no trained, non-empty segment"):
        check_formatter(NothingTrained(), [ROW], tokenizer)
    with pytest.raises(AssertionError, match=r"list\[Segment\]"):
        check_formatter(NotSegments(), [ROW], tokenizer)


def test_build_formatter_rejects_unknown_kinds_and_options():
    with pytest.raises(ConfigError, match="known: .*alpaca"):
        build_formatter({"kind": "nope"})
    with pytest.raises(ConfigError, match="feild"):
        build_formatter({"kind": "text", "feild": "x"})


def test_dolly_example_plugin_loads_from_yaml_and_meets_the_contract(monkeypatch, tokenizer):
    import json
    from pathlib import Path

    from qlora_kit.config.io import load_config

    examples = Path(__file__).resolve().parents[2] / "examples"
    monkeypatch.syspath_prepend(str(examples))
    monkeypatch.chdir(examples.parent)
    cfg = load_config(examples / "configs" / "dolly.yaml")
    formatter = build_formatter(cfg.data.formatter)
    rows = [json.loads(line) for line in (examples / "data" / "dolly_sample.jsonl").read_text().splitlines()]
    assert check_formatter(formatter, rows, tokenizer) == len(rows)
    text = golden(formatter, rows[1], tokenizer)
    assert text.startswith("[MASKED]### Instruction:\nSummarize") and "### Context:\nThe river" in text
    assert text.endswith(
        "### Response:\n[/MASKED]Heavy rain flooded the fields and closed the bridge for a while." + EOS
    )
