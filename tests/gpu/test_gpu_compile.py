"""`train.compile` on a CUDA device, from the command line: the same losses as eager (auto-skipped
without a GPU)."""

from __future__ import annotations

import json

import pytest

from qlora_kit.cli import main


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


@pytest.mark.gpu
def test_compiled_layers_train_the_same_losses_as_eager_on_gpu(tiny_run_config, tmp_path, gpu_device, capsys):
    cfg = tiny_run_config(max_steps=4, micro_batch_size=2, log_every=1)
    common = [str(cfg), "adapter.dropout=0"]
    assert main(["train", *common, "train.compile=false", "-v"]) == 0
    capsys.readouterr()
    from torch._dynamo.utils import counters

    counters.clear()
    assert main(["train", *common, "train.compile=true", f"output_dir={tmp_path / 'compiled'}", "-v"]) == 0
    assert "train.compile: 2 decoder layers compiled" in capsys.readouterr().err
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "run"), rel=1e-4)


@pytest.mark.gpu
def test_cuda_graphs_train_the_same_losses_as_eager_with_accumulation(
    tiny_run_config, tmp_path, gpu_device, capsys
):
    """`train.compile=cuda_graphs` with two passes per step, each padded to one shape: every step's loss as
    eager (the gradients copied out of the graphs' memory, or the second pass's replay would corrupt the
    first's: pytorch/pytorch#169545)."""
    cfg = tiny_run_config(max_steps=4, micro_batch_size=2, grad_accum=2, micro_batch_tokens=None, log_every=1)
    common = [
        str(cfg),
        "adapter.dropout=0",
        "data.padding=max_length",
        "data.packing=false",
        "data.max_length=128",
    ]
    assert main(["train", *common, "train.compile=false"]) == 0
    capsys.readouterr()
    graphs = tmp_path / "graphs"
    assert main(["train", *common, "train.compile=cuda_graphs", f"output_dir={graphs}", "-v"]) == 0
    assert "train.compile: cuda_graphs: on, with CUDA graphs" in capsys.readouterr().err
    eager = _losses(tmp_path / "run")
    assert len(eager) == 4
    assert _losses(graphs) == pytest.approx(eager, rel=1e-4)
