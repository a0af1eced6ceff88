"""The data report counts the source's rows (not only those left after the eval split), and its plots
are readable: a histogram whose bars are not hairlines, a loss curve on a log scale when it must be."""

from __future__ import annotations

import re

import pytest

from qlora_kit.config import DataConfig
from qlora_kit.data import build_datasets, build_formatter
from qlora_kit.data.report import length_bins, lengths_figure
from qlora_kit.testing import make_alpaca_rows
from qlora_kit.training.tracking import loss_figure


def build(tokenizer, **data):
    data.setdefault("source", {"rows": make_alpaca_rows(30)})
    cfg = DataConfig.model_validate(data)
    return build_datasets(cfg, build_formatter(cfg.formatter), tokenizer, micro_batch_size=2).report


def test_rows_of_the_source_the_split_and_training_are_each_counted(tokenizer):
    report = build(tokenizer, eval={"fraction": 0.2})
    text = report.to_text()
    assert re.search(r"in source +30 ", text)
    assert re.search(r"held out +6  \(data.eval; 6 kept for evaluation\)", text)
    assert re.search(r"for training +24\n", text)
    assert report.headline().startswith("30 rows -> 24 train, 6 eval; ")
    assert (report.source_rows, report.rows_loaded, report.held_out_rows) == (30, 24, 6)


def test_a_subset_is_counted_between_the_source_and_the_split(tokenizer):
    report = build(tokenizer, subset={"n": 20}, eval={"fraction": 0.25})
    assert re.search(r"subset +20  \(data.subset\)", report.to_text())
    assert report.headline().startswith("30 rows (subset 20) -> 15 train, 5 eval; ")


def test_dropped_rows_are_named_in_the_headline(tokenizer):
    report = build(tokenizer, eval={"fraction": 0.2}, max_length=120, truncation="drop")
    assert report.rows_kept < report.rows_loaded
    assert f"; kept {report.rows_kept} and {report.eval_rows} (the data report says why)" in report.headline()


def test_the_summary_names_the_window_its_train_loss_averages():
    from qlora_kit.recipe import last_window

    history = [{"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 1.0}, {"step": 20, "loss": 1.0}]
    assert last_window(history) == "mean of steps 11-20"
    assert last_window([{"step": 1, "loss": 2.0}]) == "step 1"


def test_length_histogram_bars_are_wide_enough_to_see(tokenizer):
    report = build(tokenizer)  # lengths ~100-190 tokens, max_length 1024
    axes = lengths_figure(report).axes[0]
    low, high = axes.get_xlim()
    widths = [patch.get_width() for patch in axes.patches]
    assert widths and min(widths) >= 0.02 * (high - low)  # before: 40 bins squeezed left of max_length
    assert high < report.max_length  # the far-away limit is written, not drawn


@pytest.mark.parametrize(
    ("lengths", "width"), [([5], 1), (list(range(100, 191)), 3), (list(range(1, 4001)), 100)]
)
def test_length_bins_are_whole_tokens_and_cover_every_length(lengths, width):
    edges = length_bins(lengths)
    assert edges[1] - edges[0] == width and len(edges) <= 41
    assert edges[0] < min(lengths) and edges[-1] > max(lengths)


def test_loss_curve_uses_a_log_scale_when_the_loss_spans_orders_of_magnitude():
    falling = [{"step": i, "loss": 10 * 0.7**i} for i in range(1, 30)]
    flat = [{"step": i, "loss": 2.0 - 0.01 * i} for i in range(1, 30)]
    assert loss_figure(falling).axes[0].get_yscale() == "log"
    assert loss_figure(flat).axes[0].get_yscale() == "linear"
    assert loss_figure([{"step": 1, "skipped": "no supervised tokens"}]) is None
