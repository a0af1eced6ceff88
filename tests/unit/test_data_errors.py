"""Bad input: every case names the file, row and field; skip_bad_rows counts instead of failing."""

from __future__ import annotations

import json

import pytest
import yaml

from qlora_kit.cli import main
from qlora_kit.config import DataConfig
from qlora_kit.data import build_datasets, build_formatter
from qlora_kit.errors import DataError
from qlora_kit.testing import make_alpaca_rows

GOOD = make_alpaca_rows(6)


def build(tokenizer, **data):
    cfg = DataConfig.model_validate(data)
    return build_datasets(cfg, build_formatter(cfg.formatter), tokenizer)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"instruction": "Do it."}, "field 'output': missing"),
        ({"instruction": "Do it.", "output": 42}, "field 'output': expected a string, got int"),
        ({"instruction": "Do it.", "output": ""}, "field 'output': empty"),
        ({"instruction": None, "output": "Done."}, "field 'instruction': missing"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, tokenizer, bad, message):
    path = write_jsonl(tmp_path / "train.jsonl", [*GOOD[:2], bad, *GOOD[2:]])
    with pytest.raises(DataError, match=rf"train\.jsonl line 3: {message}.*--skip-bad-rows"):
        build(tokenizer, source={"path": path})


def test_bad_rows_in_memory_name_the_row(tokenizer):
    with pytest.raises(DataError, match=r"<rows> row 1: field 'output': empty"):
        build(tokenizer, source={"rows": [GOOD[0], {**GOOD[1], "output": " "}]})


def test_skip_bad_rows_counts_and_reports(tmp_path, tokenizer):
    bad = [{"instruction": "x"}, {"instruction": "y", "output": 3}]
    path = write_jsonl(tmp_path / "train.jsonl", [*GOOD, *bad])
    report = build(tokenizer, source={"path": path}, skip_bad_rows=True).report
    assert (report.rows_loaded, report.rows_kept, report.rows_skipped) == (8, 6, 2)
    assert report.skipped_examples[0] == (f"{path} line 7", "output", "missing")
    assert (
        "skipped             2" in report.to_text()
        and "line 8: output: expected a string" in report.to_text()
    )


def test_invalid_json_names_the_line(tmp_path, tokenizer):
    lines = [json.dumps(r) for r in GOOD[:3]] + ['{"instruction": "x", "output": }']
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"broken\.jsonl: not valid JSON at line 4"):
        build(tokenizer, source={"path": str(path)})
    array = tmp_path / "broken.json"
    array.write_text("[\n" + json.dumps(GOOD[0]) + ",\n" + json.dumps(GOOD[1])[:-1] + "\n]")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON at line 4"):
        build(tokenizer, source={"path": str(array)})


def test_a_single_pretty_printed_object_is_not_rows(tmp_path, tokenizer):
    path = tmp_path / "nested.json"
    path.write_text(json.dumps({"data": GOOD}, indent=2))
    with pytest.raises(
        DataError, match=r"nested\.json: expected a JSON list of rows or one JSON object per line"
    ):
        build(tokenizer, source={"path": str(path)})


def test_a_row_that_is_not_an_object(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD[0], ["a", "list"]])
    with pytest.raises(DataError, match=r"line 2: expected a JSON object per row, got list"):
        build(tokenizer, source={"path": path})


def test_missing_file(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        build(tokenizer, source={"path": str(tmp_path / "nope.jsonl")})


def test_wrong_column_mapping_lists_the_columns(tokenizer):
    with pytest.raises(
        DataError, match=r"maps 'output' to column 'answer'.*columns are \['instruction', 'input', 'output'\]"
    ):
        build(tokenizer, source={"rows": GOOD, "columns": {"output": "answer"}})


def test_unmapped_formatter_field_suggests_a_mapping(tokenizer):
    rows = [{"question": r["instruction"], "answer": r["output"]} for r in GOOD]
    with pytest.raises(
        DataError, match=r"reads \['instruction', 'output'\].*data\.source\.columns: \{instruction: <column>"
    ):
        build(tokenizer, source={"rows": rows})


def test_empty_dataset_after_filtering(tokenizer):
    with pytest.raises(
        DataError, match=r"no trainable rows left: 6 loaded, 0 skipped.*6 longer than max_length"
    ):
        build(tokenizer, source={"rows": GOOD}, max_length=8, truncation="drop")
    with pytest.raises(DataError, match=r"no trainable rows left: 2 loaded, 2 skipped"):
        build(tokenizer, source={"rows": [{"instruction": "x", "output": 1}] * 2}, skip_bad_rows=True)


def test_every_label_masked_fails_before_training(tokenizer):
    # A prompt that fills max_length leaves no supervised token: dropped, then nothing left.
    with pytest.raises(DataError, match=r"6 prompt fills max_length.*Every label would be masked"):
        build(tokenizer, source={"rows": GOOD}, max_length=12)


def test_truncation_error_policy_is_not_skippable(tokenizer):
    with pytest.raises(DataError, match=r"<rows> row 0: \d+ tokens > max_length 16"):
        build(tokenizer, source={"rows": GOOD}, max_length=16, truncation="error", skip_bad_rows=True)


@pytest.fixture
def cli_config(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "train.jsonl", [*GOOD, {"instruction": "x", "output": 7}])
    config = {"model": {"tokenizer": str(tmp_path / "tok")}, "data": {"source": {"path": data}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_data_fails_with_exit_2_then_skips_bad_rows(cli_config, tmp_path, capsys):
    assert main(["data", str(cli_config)]) == 2
    assert "train.jsonl line 7: field 'output': expected a string, got int" in capsys.readouterr().err
    out_dir = tmp_path / "report"
    assert (
        main(["data", str(cli_config), "data.packing=true", "--skip-bad-rows", "--output", str(out_dir)]) == 0
    )
    text = capsys.readouterr().out
    assert "skipped             1" in text and "packing" in text
    assert json.loads((out_dir / "data_report.json").read_text())["rows_skipped"] == 1
