"""Chat data shapes: ShareGPT (`conversations` of `from`/`value`), other keys and role names, a row's own
system column; the same masks as OpenAI-style messages (assistant turns only), from files too."""

from __future__ import annotations

import json

import pytest
import yaml

from qlora_kit.cli import main
from qlora_kit.config import DataConfig
from qlora_kit.data import build_datasets
from qlora_kit.data.report import show_labels
from qlora_kit.errors import ConfigError, DataError
from qlora_kit.formatting import IGNORE_INDEX, RESPONSE_MARK, RowError, build_formatter
from qlora_kit.generation import prompt_ids
from qlora_kit.testing import make_tokenizer

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "A pear."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "An apple."},
]
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
SHAREGPT = {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in MESSAGES]}
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _labels(formatter, row, tokenizer):
    enc = formatter.encode(row, tokenizer)
    return show_labels(enc.input_ids, enc.labels, tokenizer)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_sharegpt_rows_train_exactly_like_messages(tokenizer):
    expected = _labels(build_formatter("chatml"), {"messages": MESSAGES}, tokenizer)
    assert _labels(build_formatter("sharegpt"), SHAREGPT, tokenizer) == expected
    assert expected.count("[/MASKED]") == 2  # the two assistant turns, and nothing else, are trained
    assert "[/MASKED]A pear.<|im_end|>[MASKED]" in expected
    # the same data through the chat formatters' options
    options = {"messages_field": "conversations", "role_key": "from", "content_key": "value"}
    assert _labels(build_formatter({"kind": "chatml", **options}), SHAREGPT, tokenizer) == expected


def test_the_tokenizers_template_reads_sharegpt_keys_too(chat_tokenizer):
    options = {"kind": "chat_template", "messages_field": "conversations", "role_key": "from",
               "content_key": "value"}  # fmt: skip
    expected = _labels(
        build_formatter("chat_template", chat_tokenizer), {"messages": MESSAGES}, chat_tokenizer
    )
    assert _labels(build_formatter(options, chat_tokenizer), SHAREGPT, chat_tokenizer) == expected


def test_any_keys_and_role_names_can_be_mapped(tokenizer):
    speaker = {"system": "narrator", "user": "customer", "assistant": "agent"}
    row = {"dialog": [{"speaker": speaker[m["role"]], "text": m["content"]} for m in MESSAGES]}
    formatter = build_formatter({
        "kind": "chatml", "messages_field": "dialog", "role_key": "speaker", "content_key": "text",
        "roles": {"narrator": "system", "customer": "user", "agent": "assistant"},
    })  # fmt: skip
    assert _labels(formatter, row, tokenizer) == _labels(
        build_formatter("chatml"), {"messages": MESSAGES}, tokenizer
    )


def test_a_rows_own_system_column(tokenizer):
    row = {"system": "Be brief.", "conversations": SHAREGPT["conversations"][1:]}
    assert _labels(build_formatter("sharegpt"), row, tokenizer) == _labels(
        build_formatter("sharegpt"), SHAREGPT, tokenizer
    )
    with_default = build_formatter({"kind": "sharegpt", "system": "Default."})
    defaulted = _labels(with_default, {"conversations": row["conversations"]}, tokenizer)
    assert defaulted.startswith("[MASKED]<|im_start|>system\nDefault.<|im_end|>")


def test_unknown_roles_and_bad_messages_name_the_datas_own_keys():
    formatter = build_formatter("sharegpt")
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "tool", "value": "{}"}]}
    with pytest.raises(
        RowError, match=r"from must be one of system, user, assistant, human, gpt, got 'tool'"
    ) as info:
        formatter.check(row)
    assert info.value.field == "conversations[1]"
    with pytest.raises(RowError, match="value must be a string, got NoneType"):
        formatter.check({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]})
    with pytest.raises(RowError, match="missing") as info:
        formatter.check({"messages": MESSAGES})
    assert info.value.field == "conversations"


def test_standard_roles_cannot_be_renamed():
    with pytest.raises(ConfigError, match="user -> assistant: system, user and assistant cannot be renamed"):
        build_formatter({"kind": "chatml", "roles": {"user": "assistant"}})


@pytest.mark.parametrize("kind", ["chatml", "sharegpt"])
def test_generation_prompts_are_in_the_datas_shape(tokenizer, kind):
    formatter = build_formatter(kind)
    row = {"messages": MESSAGES} if kind == "chatml" else SHAREGPT
    enc = formatter.encode(row, tokenizer)
    last_prompt_end = max(i for i in range(1, len(enc.labels) - 1)
                          if enc.labels[i] == IGNORE_INDEX and enc.labels[i + 1] != IGNORE_INDEX)  # fmt: skip
    history = [{"role": m["role"], "content": m["content"]} for m in MESSAGES[:3]]
    example = formatter.prompt_example("Another?", history=history)
    assert prompt_ids(formatter, tokenizer, example) == enc.input_ids[: last_prompt_end + 1]
    prediction, answer = formatter.prediction_example(row)
    assert (
        answer == "An apple."
        and prompt_ids(formatter, tokenizer, prediction) == enc.input_ids[: last_prompt_end + 1]
    )


def test_prediction_examples_of_instruction_and_text_formats():
    alpaca = build_formatter("alpaca")
    example, answer = alpaca.prediction_example(
        {"instruction": "Count.", "input": "a b", "output": "2", "id": 7}
    )
    assert (
        example == {"instruction": "Count.", "input": "a b", "output": RESPONSE_MARK, "id": 7}
        and answer == "2"
    )
    assert alpaca.prediction_example({"instruction": "Count."})[1] is None  # no reference: predict only
    with pytest.raises(RowError, match="missing") as info:
        alpaca.prediction_example({"input": "a b"})
    assert info.value.field == "instruction"
    text = build_formatter("text")
    assert text.prediction_example({"text": "Once"}) == ({"text": "Once" + RESPONSE_MARK}, None)
    sharegpt = build_formatter("sharegpt")
    asked = {"conversations": SHAREGPT["conversations"][:4]}  # ends with the user's question
    example, answer = sharegpt.prediction_example(asked)
    assert answer is None and example["conversations"][-1] == {"from": "assistant", "value": RESPONSE_MARK}
    with pytest.raises(RowError, match="no user turn to answer"):
        sharegpt.prediction_example({"conversations": SHAREGPT["conversations"][:1]})


def _sharegpt_file(path, n=12):
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"conversations": [
                {"from": "system", "value": "Answer in one word."},
                {"from": "human", "value": f"Colour number {i}?"},
                {"from": "gpt", "value": ["red", "green", "blue"][i % 3]},
            ]}) + "\n")  # fmt: skip
    return path


def test_sharegpt_jsonl_through_the_pipeline_and_the_data_command(tmp_path, tiny_llama_dir, capsys):
    rows = _sharegpt_file(tmp_path / "chats.jsonl")
    data_cfg = DataConfig(source={"path": str(rows)}, formatter={"kind": "sharegpt"}, max_length=128)
    tokenizer = make_tokenizer()
    bundle = build_datasets(data_cfg, build_formatter(data_cfg.formatter), tokenizer)
    assert len(bundle.train) == 12
    for i, labels in enumerate(bundle.train["labels"]):
        trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
        assert trained == ["red", "green", "blue"][i % 3] + "<|im_end|><|endoftext|>"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_llama_dir)},
                                      "data": data_cfg.model_dump(mode="json")}))  # fmt: skip
    assert main(["data", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["formatter"] == "sharegpt" and report["rows_kept"] == 12
    with rows.open("a") as f:
        f.write(
            json.dumps({"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]})
            + "\n"
        )
    assert main(["data", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{rows} line 13: field 'conversations[1]': from must be one of" in err and "got 'bot'" in err
    with pytest.raises(DataError, match="line 13"):
        build_datasets(data_cfg, build_formatter(data_cfg.formatter), tokenizer)


def test_sharegpt_through_datasets_as_from_the_hub(tmp_path, tokenizer):
    """A parquet file is read by `datasets` and converted row by row, as a hub dataset is (Arrow fills keys
    that only some messages have, here ShareGPT's optional `weight`, with None)."""
    import datasets

    rows = [
        json.loads(line) for line in _sharegpt_file(tmp_path / "chats.jsonl", n=6).read_text().splitlines()
    ]
    rows[0]["conversations"][2]["weight"] = 1.0
    path = tmp_path / "chats.parquet"
    datasets.Dataset.from_list(rows).to_parquet(path)
    from_parquet = DataConfig(source={"path": str(path)}, formatter={"kind": "sharegpt"}, max_length=128)
    from_jsonl = from_parquet.model_copy(
        update={"source": from_parquet.source.model_copy(update={"path": str(tmp_path / "chats.jsonl")})}
    )
    formatter = build_formatter(from_parquet.formatter)
    a, b = (build_datasets(c, formatter, tokenizer).train for c in (from_parquet, from_jsonl))
    assert a["labels"] == b["labels"] and a["input_ids"] == b["input_ids"] and len(a) == 6
