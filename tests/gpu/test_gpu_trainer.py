"""The Trainer on a GPU: bf16 autocast from `mixed_precision: auto`, the loss falls, checkpoints round-trip."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import adapter_tensors, checkpoint_tensors
from qlora_kit.training import Callback, Trainer

pytestmark = pytest.mark.gpu


def qlora_model(model_dir, device, compute_dtype="bfloat16"):
    loader = ModelLoader(
        ModelConfig(name_or_path=str(model_dir)), Bnb4bit.Config(compute_dtype=compute_dtype), device
    )
    model = prepare_for_training(loader.load_model(), grad_checkpointing=True)
    torch.manual_seed(0)
    return AdapterBuilder(AdapterBuilder.Config(r=8, alpha=16, dropout=0.0)).apply(model)


def token_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(8, 12))]
        rows.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return rows


def config(**overrides):
    settings = dict(
        micro_batch_size=2,
        grad_accum=2,
        log_every=1,
        mixed_precision="auto",
        loss="standard",
        optimizer={"kind": "paged_adamw_8bit", "lr": 1e-2},
    )  # fmt: skip  (the tests hook the head)
    return TrainConfig(**{**settings, **overrides})


def adapters(model):
    return {n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}


def test_bf16_autocast_and_loss_falls(tiny_llama_dir, tmp_path, gpu_device):
    model = qlora_model(tiny_llama_dir, gpu_device)
    seen = []
    lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default
    lora_a.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    rows = token_rows(4)
    result = Trainer(config(epochs=24), output_dir=tmp_path).fit(model, rows, rows)  # 24 steps

    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert set(seen) == {expected}
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert result.eval_loss < losses[0] and result.peak_memory_gb is not None and result.peak_memory_gb > 0
    assert all(p.device.type == "cuda" for p in model.parameters())


class Crash(Callback):
    def on_step_end(self, state, metrics):
        if state.step == 2:
            raise KeyboardInterrupt("killed after step 2")


def test_checkpoint_round_trip_and_resume(tiny_llama_dir, tmp_path, gpu_device):
    rows = token_rows(8)  # 4 micro-batches -> 2 steps per epoch
    cfg = config(epochs=2, save_every=2)
    reference = qlora_model(tiny_llama_dir, gpu_device)
    full = Trainer(cfg, output_dir=tmp_path / "full").fit(reference, rows)
    saved = checkpoint_tensors(full.checkpoints[-1])
    live = adapter_tensors(reference)
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k].float(), v.cpu()) for k, v in live.items())

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, output_dir=tmp_path / "cut", callbacks=[Crash()]).fit(
            qlora_model(tiny_llama_dir, gpu_device), rows
        )
    resumed = qlora_model(tiny_llama_dir, gpu_device)
    result = Trainer(config(epochs=2, save_every=2, resume="auto"), output_dir=tmp_path / "cut").fit(
        resumed, rows
    )
    assert result.steps == full.steps == 4
    got = adapter_tensors(resumed)
    for name, value in live.items():  # GPU kernels may reorder float sums: near, not bit-equal
        torch.testing.assert_close(
            got[name].float().cpu(), value.float().cpu(), rtol=1e-3, atol=1e-5, msg=name
        )


def test_fp16_trains_with_a_loss_scaler_that_is_checkpointed(tiny_llama_dir, tmp_path, gpu_device):
    model = qlora_model(tiny_llama_dir, gpu_device, compute_dtype="float16")
    cfg = config(max_steps=3, save_every=3, mixed_precision="fp16")
    result = Trainer(cfg, output_dir=tmp_path).fit(model, token_rows(8))
    assert result.steps == 3 and math.isfinite(result.train_loss)
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in adapters(model).values())
