"""The seed recipe's training hyper-parameters, written in YAML, run a few steps on the 4-bit tiny Llama.

Seed (SFTConfig): 3 epochs, per-device batch 2, gradient accumulation 5, gradient checkpointing,
lr 2e-4, adamw_8bit, weight decay 0.01, max_grad_norm 0.3, warmup_ratio 0.03, bf16 where supported
else fp16 (`mixed_precision: auto`; none on this CPU), LoRA r=8, alpha=16, dropout 0.05.
"""

from __future__ import annotations

import random

import bitsandbytes as bnb
import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from qlora_kit.config import ModelConfig
from qlora_kit.config.io import load_config
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.training import Trainer

SEED_YAML = """
quant: {kind: bnb_4bit, quant_type: nf4, double_quant: true, compute_dtype: float32}
adapter: {r: 8, alpha: 16, dropout: 0.05, bias: none}
train:
  epochs: 3
  micro_batch_size: 2
  grad_accum: 5
  grad_checkpointing: true
  optimizer: {kind: adamw_8bit, lr: 2.0e-4, weight_decay: 0.01}
  scheduler: {kind: linear, warmup_ratio: 0.03}
  max_grad_norm: 0.3
  mixed_precision: auto
  log_every: 1
  seed: 42
"""


def test_seed_hyperparameters_are_expressible_and_run(tiny_llama_dir, tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    cfg = load_config(path, [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_llama_dir}"])
    train = cfg.train
    assert (train.epochs, train.micro_batch_size, train.grad_accum) == (3, 2, 5)
    assert (train.optimizer.kind, train.optimizer.lr, train.optimizer.weight_decay) == (
        "adamw_8bit",
        2e-4,
        0.01,
    )
    assert (train.scheduler.kind, train.scheduler.warmup_ratio, train.max_grad_norm) == ("linear", 0.03, 0.3)

    model = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), cfg.quant, "cpu").load_model()
    model = AdapterBuilder(cfg.adapter).apply(prepare_for_training(model, train.grad_checkpointing))
    rng = random.Random(0)
    rows = []
    for _ in range(10):  # 5 micro-batches of 2 -> 1 optimizer step of 5 micro-batches per epoch
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(6, 16))]
        rows.append({"input_ids": ids, "labels": ids})  # the seed trains on all tokens
    optimizers = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: optimizers.append(type(opt)))
    try:
        result = Trainer(train, output_dir=cfg.output_dir).fit(model, rows)
    finally:
        handle.remove()

    assert result.steps == 3 and result.epochs == 3
    assert bnb.optim.AdamW8bit in optimizers
    assert model.base_model.model.model.gradient_checkpointing
    lrs = [r["lr"] for r in result.history]
    # warmup: ceil(0.03 * 3) = 1 step at half the peak, then linear decay from the 2e-4 peak
    assert lrs == pytest.approx([1e-4, 2e-4, 1e-4])
    assert all(r["grad_norm"] > 0 for r in result.history)
