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


def test_cuda_graphs_setting_is_auto_off_cuda(tiny_run_config, capsys):
    """`train.compile=cuda_graphs` from the command line: accepted, and on the CPU it decides as `auto`."""
    assert main(["train", str(tiny_run_config(max_steps=1)), "train.compile=cuda_graphs", "-v"]) == 0
    err = capsys.readouterr().err
    assert "train.compile: cuda_graphs: CUDA only, so auto: off on cpu" in err
    assert "decoder layers compiled" not in err


def test_a_bad_compile_setting_names_the_field(tiny_run_config, capsys):
    assert main(["train", str(tiny_run_config(max_steps=1)), "train.compile=graphs"]) != 0
    err = capsys.readouterr().err
    assert "train.compile" in err and "cuda_graphs" in err


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("cuda_graphs", "cuda", True),
        ("cuda_graphs", "cpu", False),
        (True, "cuda", False),
        ("auto", "cuda", False),
    ],
)
def test_uses_cuda_graphs(setting, device, expected):
    import torch

    from qlora_kit.training.compiling import compile_decision, uses_cuda_graphs

    assert uses_cuda_graphs(setting, torch.device(device)) is expected
    if expected:  # CUDA graphs compile whatever the model's width
        assert compile_decision(setting, 64, device, offloading=False)[0]


def test_each_pass_is_marked_for_cuda_graphs(tiny_run_config, tmp_path, monkeypatch):
    """With CUDA graphs the loop marks the start of every forward pass (two per step here), so a replay may
    reuse the previous pass's graph memory; without them it marks none."""
    from qlora_kit.training import loop, speedups

    marks = []
    monkeypatch.setattr(loop, "begin_pass", lambda: marks.append(1))
    cfg = str(tiny_run_config(max_steps=3, micro_batch_size=2, grad_accum=2, micro_batch_tokens=None))
    assert main(["train", cfg]) == 0
    assert marks == []
    monkeypatch.setattr(speedups, "compile_if_wanted", lambda *a, **k: 2)  # as if two were compiled
    monkeypatch.setattr(speedups, "uses_cuda_graphs", lambda setting, device: setting == "cuda_graphs")
    assert main(["train", cfg, "train.compile=cuda_graphs", f"output_dir={tmp_path / 'graphs'}"]) == 0
    assert len(marks) == 6


def test_gradients_are_copied_out_and_still_accumulate(tokenizer, monkeypatch):
    """`copy_gradients_out`: in a step of several passes each backward's gradient reaches `.grad` as a copy
    (a CUDA graph's output would be overwritten by the next replay), and accumulation over passes still
    sums them; in a step of one pass, no copy is made."""
    import torch

    from qlora_kit.testing import make_tiny_llama
    from qlora_kit.training.compiling import GradientCopies, copy_gradients_out

    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=1)
    weight = model.model.layers[0].mlp.down_proj.weight
    incoming = []
    weight.register_hook(lambda g: incoming.append(g.data_ptr()))  # runs first: the backward's own tensor
    assert copy_gradients_out(model) == sum(1 for p in model.parameters() if p.requires_grad)
    assert copy_gradients_out(model) == 0  # a model trained again is not hooked twice
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    assert weight.grad.data_ptr() != incoming[0]  # without the copy, autograd keeps the backward's tensor
    first = weight.grad.clone()
    model(input_ids=ids, labels=ids).loss.backward()
    torch.testing.assert_close(weight.grad, 2 * first)
    monkeypatch.setattr(GradientCopies, "several_passes", False)
    weight.grad = None
    model(input_ids=ids, labels=ids).loss.backward()
    assert weight.grad.data_ptr() == incoming[-1]  # one pass: the backward's own tensor, no copy
