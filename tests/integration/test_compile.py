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


def test_default_auto_leaves_a_cpu_run_eager(tiny_run_config, capsys):
    assert main(["train", str(tiny_run_config(max_steps=1)), "-v"]) == 0
    err = capsys.readouterr().err
    assert "train.compile: auto: off on cpu" in err and "decoder layers compiled" not in err


@pytest.mark.parametrize(
    ("setting", "hidden", "device", "offloading", "expected"),
    [
        ("auto", 2048, "cuda", False, True),  # the 1B shape, where compiling measured +22%
        ("auto", 768, "cuda", False, False),  # distilgpt2: W1 gained nothing
        ("auto", 4096, "cpu", False, False),
        ("auto", 4096, "cuda", True, False),
        (True, 64, "cpu", False, True),  # explicit: kept as given
        (True, 64, "cuda", True, False),  # except with offloading
        (False, 4096, "cuda", False, False),
    ],
)
def test_wants_compile(setting, hidden, device, offloading, expected, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    import torch
    from transformers import LlamaConfig

    from qlora_kit.training.compiling import wants_compile

    model = torch.nn.Linear(2, 2)
    model.config = LlamaConfig(hidden_size=hidden)
    decided, why = wants_compile(setting, model, torch.device(device), offloading)
    assert decided is expected
    assert ("offloading" in why) is (offloading and setting is not False)


def test_auto_stays_eager_with_several_processes(monkeypatch):
    import torch
    from transformers import LlamaConfig

    from qlora_kit.training.compiling import wants_compile

    model = torch.nn.Linear(2, 2)
    model.config = LlamaConfig(hidden_size=4096)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wants_compile("auto", model, torch.device("cuda"), False) == (
        False,
        "auto: off with 2 processes (not measured under DDP / FSDP; set true to try)",
    )
    assert wants_compile(True, model, torch.device("cuda"), False)[0]  # explicit: kept


def test_compile_mode_reaches_every_decoder_layer(tokenizer, monkeypatch):
    """`compiling.COMPILE_MODE` (an experiment, e.g. CUDA graphs through "reduce-overhead") is passed to each
    layer's torch.compile; unset, torch's default mode."""
    from qlora_kit.testing import make_tiny_llama
    from qlora_kit.training import compiling

    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    seen = []
    for layer in model.model.layers:
        monkeypatch.setattr(layer, "compile", lambda **kw: seen.append(kw))
    assert compiling.compile_decoder_layers(model) == 2 and seen == [{}, {}]
    monkeypatch.setattr(compiling, "COMPILE_MODE", "reduce-overhead")
    seen.clear()
    assert compiling.compile_decoder_layers(model) == 2 and seen == [{"mode": "reduce-overhead"}] * 2
