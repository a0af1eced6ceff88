"""`train.compile`, from the command line: the decoder layers compiled, the same losses as eager."""

from __future__ import annotations

import json

import pytest

from qlora_kit.cli import main


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


def test_compiled_layers_train_the_same_losses_as_eager(tiny_run_config, tmp_path, capsys):
    cfg = tiny_run_config(max_steps=3, micro_batch_size=2, log_every=1)
    common = [str(cfg), "adapter.dropout=0"]  # dropout's random stream differs once compiled
    assert main(["train", *common]) == 0
    eager = _losses(tmp_path / "run")
    capsys.readouterr()
    from torch._dynamo.utils import counters

    counters.clear()
    assert main(["train", *common, "train.compile=true", f"output_dir={tmp_path / 'compiled'}", "-v"]) == 0
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]  # 4-bit matmul traced whole
    assert "train.compile: 2 decoder layers compiled" in capsys.readouterr().err  # the tiny Llama's 2 layers
    assert len(eager) == 3
    assert _losses(tmp_path / "compiled") == pytest.approx(eager, rel=1e-5)


def test_compile_is_skipped_with_activation_offload(caplog):
    import torch

    from qlora_kit.training.compiling import compile_decoder_layers

    assert compile_decoder_layers(torch.nn.Linear(2, 2), offloading=True) == 0
    assert "skipped, activation offloading is on" in caplog.text
