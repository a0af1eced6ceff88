"""What the docs say about the formatters and the registered kinds is what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qlora_kit.cli import main as cli
from qlora_kit.formatting import build_formatter
from qlora_kit.registry import formatters

ROOT = Path(__file__).resolve().parents[2]
DATA_FORMATS = ROOT / "docs" / "data-formats.md"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
EXAMPLE = re.compile(r"<!-- formatter: (\w+)(?: (\{.*?\}))? -->\n```json\n(.*?)```\n```text\n(.*?)```", re.S)


def examples() -> list[tuple[str, dict, dict, str]]:
    found = EXAMPLE.findall(DATA_FORMATS.read_text(encoding="utf-8"))
    return [(kind, json.loads(options or "{}"), json.loads(row), text) for kind, options, row, text in found]


def masked_text(formatter, row) -> str:
    """The rendering in the page's notation: untrained spans in [MASKED]...[/MASKED], then the trained EOS."""
    merged: list[list] = []
    for segment in formatter.render(row):
        if merged and merged[-1][1] == segment.trained:
            merged[-1][0] += segment.text
        else:
            merged.append([segment.text, segment.trained])
    return "".join(text if trained else f"[MASKED]{text}[/MASKED]" for text, trained in merged) + "<EOS>\n"


@pytest.fixture(scope="module")
def chat_tokenizer():
    from qlora_kit.testing import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE  # the page's chat_template example: a plain ChatML template
    return tokenizer


@pytest.mark.parametrize(
    ("kind", "options", "row", "shown"),
    examples(),
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "",
)
def test_each_data_format_example_renders_as_shown(kind, options, row, shown, chat_tokenizer):
    if kind not in formatters.names():
        pytest.skip(f"{kind} is not registered on this branch")
    formatter = build_formatter({"kind": kind, **options}, chat_tokenizer)
    formatter.check(row)
    assert masked_text(formatter, row) == shown


def test_every_built_in_formatter_has_its_section_and_example():
    text = DATA_FORMATS.read_text(encoding="utf-8")
    documented = {kind for kind, *_ in examples()}
    for entry in formatters.entries():
        if entry.component.__module__.startswith("qlora_kit."):
            assert f"## `{entry.name}`" in text and entry.name in documented, (
                f"{entry.name} is not documented"
            )


def test_the_config_reference_lists_what_schema_kinds_prints(capsys):
    assert cli(["schema", "--kinds"]) == 0
    printed = capsys.readouterr().out
    listed = dict(re.findall(r"^(\w+):\n((?:  .*\n)*)", printed, re.M))
    reference = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    every_kind = reference.split("## Every kind (`qlora-kit schema --kinds`)", 1)[1]
    tables = dict(re.findall(r"^### (\w+).*\n\n((?:\|.*\n)*)", every_kind, re.M))
    assert set(tables) == set(listed)
    from qlora_kit.registry import REGISTRIES

    for registry, body in listed.items():  # plugins registered by other tests of this session are left out
        builtin = {
            e.name for e in REGISTRIES[registry].entries() if e.component.__module__.startswith("qlora_kit.")
        }
        kinds = [k for k in re.findall(r"^  (\S+) ", body, re.M) if k in builtin]
        assert kinds and kinds == re.findall(r"^\| `(\S+)` \|", tables[registry], re.M), registry
