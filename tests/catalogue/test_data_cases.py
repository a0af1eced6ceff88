"""Catalogue: data files and rows (`qlora-kit data`, the same pipeline `train` runs first)."""

from __future__ import annotations

import pytest

SRC = "data.source.path="

CASES = [
    # id, argv, fragments of the message
    ("file-not-found", ["data", "{base}", SRC + "{root}/nope.jsonl"], ["nope.jsonl", "file not found", "data.source.path"]),
    ("jsonl-not-utf8", ["data", "{base}", SRC + "{latin1_jsonl}"],
     ["latin1_jsonl.jsonl", "not valid UTF-8 at line 3", "b'\\xe9'"]),
    ("json-not-utf8", ["data", "{base}", SRC + "{latin1_json}"], ["latin1.json", "not valid UTF-8 at line 3"]),
    ("csv-not-utf8", ["data", "{base}", SRC + "{latin1_csv}"], ["latin1.csv", "not valid UTF-8 at line 3"]),
    ("invalid-json-line", ["data", "{base}", SRC + "{broken_jsonl}"], ["broken_jsonl.jsonl", "not valid JSON at line 4"]),
    ("row-not-an-object", ["data", "{base}", SRC + "{not_object_jsonl}"],
     ["line 2", "expected a JSON object per row, got list"]),
    ("missing-field", ["data", "{base}", SRC + "{missing_field_jsonl}"],
     ["missing_field_jsonl.jsonl line 3", "field 'output': missing", "--skip-bad-rows"]),
    ("field-not-a-string", ["data", "{base}", SRC + "{int_field_jsonl}"],
     ["line 3", "field 'output': expected a string, got int"]),
    ("one-pretty-printed-object", ["data", "{base}", SRC + "{nested_json}"],
     ["nested.json", "expected a JSON list of rows or one JSON object per line"]),
    ("unsupported-file-type", ["data", "{base}", SRC + "{xlsx}"], ["rows.xlsx", "unsupported file type '.xlsx'"]),
    ("column-mapping-to-nothing", ["data", "{base}", "data.source.columns={{output: answer}}"],
     ["maps 'output' to column 'answer'", "columns are"]),
    ("formatter-fields-not-in-data", ["data", "{base}", SRC + "{qa_rows}"],
     ["qa.json", "reads ['instruction', 'output']", "data.source.columns"]),
    ("everything-dropped", ["data", "{base}", "data.max_length=8", "data.truncation=drop"],
     ["no trainable rows left", "longer than max_length"]),
    ("truncation-error-policy", ["data", "{base}", "data.max_length=24", "data.truncation=error"],
     ["rows.json row", "tokens > max_length 24"]),
    ("hold-out-from-one-row", ["data", "{base}", SRC + "{one_row}", "data.eval.fraction=0.5"],
     ["cannot hold out", "data.eval.fraction"]),
    ("report-dir-is-a-file", ["data", "{base}", "--output", "{file}"], ["--output", "a_file.txt: not a directory"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_data_case(expect_error, argv, expect):
    expect_error(argv, expect)
