"""`train.cuda_graphs` on a CUDA device (auto-skipped without a GPU): the decoder layers recorded per pass
shape and replayed, with the same losses as eager, from the command line and through the API."""

from __future__ import annotations

import json

import pytest
import torch

from qlora_kit.cli import main


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "layout",
    [
        [
            "data.padding=max_length",
            "data.packing=false",
            "data.max_length=128",
            "train.micro_batch_tokens=null",
        ],
        ["data.packing=true", "data.pad_to_multiple_of=64"],
    ],
    ids=["padded-two-passes", "packed-rounded"],
)
def test_recorded_layers_train_the_same_losses_as_eager(
    tiny_run_config, tmp_path, gpu_device, capsys, layout, monkeypatch
):
    """Two passes a step (padded) or one packed pass filled to a quarter of the token budget: every step's
    loss as eager, so the gradients of a pass survive the next pass's replay (they are copied out of the
    graphs' memory). Six steps: some packed width repeats (there are four), so something is recorded once a
    width met twice is worth recording (in a real run: 12 times)."""
    from qlora_kit.training import layer_graphs

    monkeypatch.setattr(layer_graphs, "MIN_RECORDED_PASSES", 2)
    cfg = tiny_run_config(max_steps=6, micro_batch_size=2, grad_accum=2, log_every=1)
    common = [str(cfg), "adapter.dropout=0", *layout]
    assert main(["train", *common]) == 0
    capsys.readouterr()
    graphs = tmp_path / "graphs"
    assert main(["train", *common, "train.cuda_graphs=true", f"output_dir={graphs}", "-v"]) == 0
    err = capsys.readouterr().err
    assert (
        "train.cuda_graphs: 2 decoder layers recorded" in err
        and "recorded 2 layers for a new pass shape" in err
    )
    eager = _losses(tmp_path / "run")
    assert len(eager) == 6
    assert _losses(graphs) == pytest.approx(eager, rel=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("light", [False, True], ids=["peft-dropout", "light-dropout"])
def test_replays_draw_new_dropout_masks(tiny_llama_dir, gpu_device, monkeypatch, light):
    """Dropout inside a recorded layer draws from the CUDA generator's advancing offset: two replays of one
    input differ (a frozen mask would repeat; the light dropout, whose seed is drawn on the host, runs as
    PEFT's while recording), and evaluation runs the eager layers."""
    from qlora_kit.config import ModelConfig
    from qlora_kit.model import ModelLoader, lora_dropout
    from qlora_kit.model.adapters import AdapterBuilder
    from qlora_kit.model.quant import Bnb4bit
    from qlora_kit.training.speedups import graph_layers_if_wanted

    if light:
        monkeypatch.setattr(lora_dropout, "LIGHT_MIN_HIDDEN", 0)  # the tiny model gets it too
    model, _ = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), gpu_device).load()
    model = AdapterBuilder(AdapterBuilder.Config(r=4, alpha=8, dropout=0.5)).apply(model)
    assert any(isinstance(m, lora_dropout.LightDropoutLinear) for m in model.modules()) is light
    for name, param in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, where no mask would change the output
            torch.nn.init.normal_(param, std=0.5)
    graphs = graph_layers_if_wanted(model, True, gpu_device, compiled=False)
    model.train()
    ids = torch.arange(1, 33, device=gpu_device)[None]
    model(input_ids=ids, use_cache=False)  # a new shape's first pass runs eagerly
    first, second = (model(input_ids=ids, use_cache=False).logits for _ in range(2))
    assert graphs.replays == 2 and len(graphs.recordings) == 1 and graphs.mismatches == 0
    assert not torch.equal(first, second)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert graphs.replays == 2  # evaluation ran eagerly
    graphs.remove()
