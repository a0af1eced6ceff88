"""build_datasets: sources, column mapping, subset, eval split, report contents and files."""

from __future__ import annotations

import json

import datasets
import pytest

from qlora_kit.config import DataConfig
from qlora_kit.data import build_datasets, build_formatter
from qlora_kit.data.report import REPORT_FILES
from qlora_kit.testing import make_alpaca_rows

ROWS = make_alpaca_rows(40)


def build(tokenizer, **data):
    data.setdefault("source", {"rows": ROWS})
    cfg = DataConfig.model_validate(data)
    return build_datasets(cfg, build_formatter(cfg.formatter), tokenizer, micro_batch_size=2)


def test_rows_in_memory_become_input_ids_and_labels(tokenizer):
    bundle = build(tokenizer)
    assert bundle.eval is None
    assert set(bundle.train.column_names) >= {"input_ids", "labels", "length"}
    assert bundle.train.num_rows == 40
    first = bundle.train[0]
    assert len(first["input_ids"]) == len(first["labels"]) == first["length"]
    assert first["input_ids"][-1] == tokenizer.eos_token_id == first["labels"][-1]


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet"])
def test_local_files_load(tmp_path, tokenizer, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    else:
        getattr(datasets.Dataset.from_list(ROWS), f"to_{suffix}")(str(path))
    bundle = build(tokenizer, source={"path": str(path)})
    assert bundle.train.num_rows == 40
    assert bundle.train["input_ids"] == build(tokenizer).train["input_ids"]


def test_column_mapping_renames_dataset_columns(tokenizer):
    rows = [{"prompt": r["instruction"], "context": r["input"], "answer": r["output"]} for r in ROWS]
    mapped = build(
        tokenizer,
        source={"rows": rows, "columns": {"instruction": "prompt", "input": "context", "output": "answer"}},
    )
    assert mapped.train["input_ids"] == build(tokenizer).train["input_ids"]


def test_subset_selects_the_same_rows_as_the_seed(tokenizer):
    bundle = build(tokenizer, subset={"n": 7, "seed": 42}, formatter={"kind": "alpaca_reference"})
    seed_rows = datasets.Dataset.from_list(ROWS).shuffle(seed=42).select(range(7))
    formatter = build_formatter(
        DataConfig.model_validate(
            {"source": {"rows": ROWS}, "formatter": {"kind": "alpaca_reference"}}
        ).formatter
    )
    expected = [formatter.encode(r, tokenizer).input_ids for r in seed_rows]
    assert bundle.train["input_ids"] == expected


def test_eval_fraction_and_eval_source(tokenizer):
    split = build(tokenizer, eval={"fraction": 0.25})
    assert (split.train.num_rows, split.eval.num_rows) == (30, 10)
    assert split.report.eval_rows == 10
    separate = build(tokenizer, eval={"source": {"rows": make_alpaca_rows(5, seed=9)}})
    assert (separate.train.num_rows, separate.eval.num_rows) == (40, 5)


def test_report_counts_and_efficiency(tokenizer):
    report = build(tokenizer, padding="max_length", max_length=256).report
    assert (report.rows_loaded, report.rows_kept, report.rows_skipped) == (40, 40, 0)
    assert report.eos_trained_rows == 40 and report.zero_supervised_rows == 0
    assert 0 < report.supervised_tokens < report.tokens == sum(report.lengths)
    eff = report.efficiency
    assert eff["padding: max_length"].processed == 40 * 256
    assert eff["packing"].processed == report.tokens and eff["packing"].real_fraction == 1.0
    assert eff["padding: max_length"].real_fraction < eff["padding: longest"].real_fraction < 1.0
    assert report.batching == "padding: max_length"
    assert report.example.startswith("[MASKED]Below is an instruction") and "[/MASKED]" in report.example


def test_report_counts_truncation_and_drops(tokenizer):
    lengths = build(tokenizer).report.lengths
    cut = sorted(lengths)[len(lengths) // 2]
    report = build(tokenizer, max_length=cut).report
    assert (
        report.rows_truncated
        == report.eos_lost
        == sum(n > cut for n in lengths) - sum(report.rows_dropped.values())
    )
    dropped = build(tokenizer, max_length=cut, truncation="drop").report
    assert dropped.rows_dropped == {"longer than max_length": sum(n > cut for n in lengths)}
    assert dropped.rows_kept == sum(n <= cut for n in lengths)


def test_group_by_length_improves_longest_padding_in_the_report(tokenizer):
    plain = build(tokenizer).report.efficiency["padding: longest"]
    grouped = build(tokenizer, group_by_length=True).report.efficiency["padding: longest"]
    assert grouped.processed <= plain.processed


def test_report_writes_json_text_and_png(tmp_path, tokenizer):
    cfg = DataConfig.model_validate({"source": {"rows": ROWS}, "packing": True})
    bundle = build_datasets(cfg, build_formatter(cfg.formatter), tokenizer, output_dir=tmp_path)
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "data_lengths.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "data_report.json").read_text())
    assert data["rows_kept"] == 40 and data["efficiency"]["packing"]["real_fraction"] == 1.0
    text = (tmp_path / "data_report.txt").read_text()
    assert "packing" in text and "<- configured" in text and "token lengths" in text
    assert bundle.report.to_text() == text
