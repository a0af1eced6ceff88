"""Catalogue: the config file and dotted overrides (`qlora-kit validate`, which every command shares)."""

from __future__ import annotations

import pytest

CASES = [
    # id, argv, fragments of the message
    ("unknown-key-typo", ["validate", "{base}", "train.epohcs=3"], ["train", "did you mean 'epochs'"]),
    ("unknown-quant-kind", ["validate", "{base}", "quant.kind=bnb_3bit"], ["quant", "bnb_4bit", "bnb_8bit"]),
    ("unknown-formatter", ["validate", "{base}", "data.formatter.kind=alpacca"], ["data.formatter", "unknown formatter 'alpacca'; known: alpaca"]),
    ("wrong-type", ["validate", "{base}", "train.epochs=abc"], ["train.epochs", "valid number"]),
    ("out-of-range", ["validate", "{base}", "adapter.r=0"], ["adapter.r", "greater than 0"]),
    ("nan-lr", ["validate", "{base}", "train.optimizer.lr=.nan"], ["train.optimizer.lr"]),
    ("infinite-lr", ["validate", "{base}", "train.optimizer.lr=.inf"], ["train.optimizer.lr", "finite"]),
    ("eval-every-without-eval-data", ["validate", "{base}", "train.eval_every=1"], ["train.eval_every", "data.eval"]),
    ("bad-yaml-syntax", ["validate", "{bad_yaml}"], ["bad.yaml", "line 2", "expected ','"]),
    ("config-not-utf8", ["validate", "{latin1_yaml}"], ["latin1.yaml", "UTF-8", "line 1"]),
    ("override-value-bad-yaml", ["validate", "{base}", "train.optimizer.lr=[1"], ["train.optimizer.lr", "not valid YAML"]),
    ("config-not-found", ["validate", "{root}/nope.yaml"], ["nope.yaml", "config file not found"]),
    ("config-is-a-directory", ["validate", "{empty}"], ["empty_dir", "config file not found"]),
    ("config-top-level-list", ["validate", "{list_yaml}"], ["list.yaml", "top level must be a mapping"]),
    ("plugin-import-fails", ["validate", "{base}", "plugins=[no_such_module_xyz]"], ["plugins", "no_such_module_xyz"]),
    ("packing-with-max-length-padding", ["validate", "{base}", "data.packing=true", "data.padding=max_length"],
     ["data", "packing: true", "padding: max_length"]),
    ("source-path-and-rows", ["validate", "{base}", "data.source.rows=[{{instruction: a, output: b}}]"],
     ["data.source", "exactly one of `path` or `rows`"]),
    ("two-warmups", ["validate", "{base}", "train.scheduler.warmup_steps=5", "train.scheduler.warmup_ratio=0.1"], ["train.scheduler", "at most one"]),
    ("override-without-equals", ["validate", "{base}", "train.epochs"], ["train.epochs", "section.key=value"]),
    ("override-empty-key", ["validate", "{base}", "=3"], ["=3", "section.key=value"]),
    ("override-into-a-value", ["validate", "{base}", "train.max_steps.x=1"], ["train.max_steps", "not a section"]),
    ("literal-choice", ["validate", "{base}", "data.truncation=chop"], ["data.truncation", "'truncate'"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_case(expect_error, argv, expect):
    expect_error(argv, expect)
