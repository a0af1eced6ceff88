"""On CUDA each step's loss and norm are read one step late where the optimizer is fused torch AdamW (the
default), not with bitsandbytes' 8-bit AdamW; the same losses either way; and a non-finite step updates nothing
(fused AdamW's ``found_inf``) and is named."""

from __future__ import annotations

import json

import pytest
import torch

from qlora_kit.cli import main
from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.errors import TrainingError
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import adapter_tensors
from qlora_kit.training import Callback, Trainer, step_stats

pytestmark = pytest.mark.gpu


def _losses(run):
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_cli_reads_late_with_fused_adamw_only_and_trains_the_same(
    tiny_run_config, tmp_path, monkeypatch, gpu_device
):
    seen = []
    original = step_stats.defers
    monkeypatch.setattr("qlora_kit.training.loop.defers", lambda *a: seen.append(original(*a)) or seen[-1])
    cfg = tiny_run_config(max_steps=6, micro_batch_size=2, grad_accum=2, log_every=1)
    assert main(["train", str(cfg), "adapter.dropout=0"]) == 0
    eight_bit = tmp_path / "eight_bit"
    assert main(["train", str(cfg), "adapter.dropout=0", "train.optimizer.kind=adamw_8bit",
                 f"output_dir={eight_bit}"]) == 0  # fmt: skip
    monkeypatch.setattr(step_stats, "DEFERRING_DEVICES", set())
    at_once = tmp_path / "at_once"
    assert main(["train", str(cfg), "adapter.dropout=0", f"output_dir={at_once}"]) == 0
    assert seen == [True, False, False]
    assert _losses(tmp_path / "run") == pytest.approx(_losses(at_once), rel=1e-5)


class _Snapshot(Callback):
    def __init__(self, model, at):
        self.model, self.at, self.tensors = model, at, None

    def on_step_end(self, state, metrics):
        if state.step == self.at:
            self.tensors = {k: v.clone() for k, v in adapter_tensors(self.model).items()}


def test_a_non_finite_step_updates_nothing_on_the_device(tiny_llama_dir, tmp_path, gpu_device):
    loader = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), gpu_device)
    model = prepare_for_training(loader.load_model(), grad_checkpointing=False)
    torch.manual_seed(0)
    model = AdapterBuilder(AdapterBuilder.Config(r=4, dropout=0.0)).apply(model)
    forwards = []

    def poison(module, args, output):  # the third step's forward overflows
        forwards.append(1)
        return output * float("inf") if len(forwards) == 3 else output

    model.get_output_embeddings().register_forward_hook(poison)
    rows = [{"input_ids": list(range(1, 20)), "labels": list(range(1, 20))} for _ in range(8)]
    snapshot = _Snapshot(model, at=2)
    cfg = TrainConfig(micro_batch_size=1, max_steps=6, log_every=6, loss="standard", grad_checkpointing=False)
    trainer = Trainer(cfg, output_dir=tmp_path, callbacks=[snapshot])
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 3; the weights were not updated"):
        trainer.fit(model, rows)
    assert trainer._deferred
    assert all(torch.equal(t, snapshot.tensors[k]) for k, t in adapter_tensors(model).items())
