"""Optimizer and schedule factories: parameter groups, each optimizer kind, each schedule's shape."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qlora_kit.config import TrainConfig
from qlora_kit.training.optim import param_groups


def build_optimizer(cfg, model):
    return cfg.build().create(model)


def build_scheduler(cfg, optimizer, total_steps):
    return cfg.build().create(optimizer, total_steps)


def lr_factor(cfg, step, total):
    return cfg.build().factor(step, total)


def warmup_steps(cfg, total):
    return cfg.build().warmup_steps(total)


class _Adapted(nn.Module):
    """A frozen base with a LoRA-like pair of matrices, a trained bias and a trained norm."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(128, 64)
        self.base.weight.requires_grad_(False)  # frozen; its bias stays trainable
        # 4096 elements: the smallest tensor bitsandbytes gives 8-bit optimizer state
        self.lora_A = nn.Parameter(torch.randn(32, 128) * 0.01)
        self.lora_B = nn.Parameter(torch.randn(64, 32) * 0.01)
        self.norm = nn.LayerNorm(64)

    def forward(self, x):
        return self.norm(self.base(x) + x @ self.lora_A.T @ self.lora_B.T)


def test_weight_decay_only_on_matrices():
    model = _Adapted()
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.lora_A), id(model.lora_B)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model.base.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }


def test_no_trainable_parameters_is_an_error():
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.Linear(2, 2).requires_grad_(False), 0.0)


@pytest.mark.parametrize("kind", ["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_each_optimizer_takes_a_step_on_cpu(kind):
    torch.manual_seed(0)
    model = _Adapted()
    cfg = TrainConfig(optimizer={"kind": kind, "lr": 1e-2, "weight_decay": 0.01}).optimizer
    optimizer = build_optimizer(cfg, model)
    before = model.lora_A.detach().clone()
    model(torch.randn(4, 128)).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.lora_A)
    assert torch.isfinite(model.lora_A).all()
    if kind == "adamw_torch":
        assert optimizer.defaults["fused"]  # fused kernel on the CPU too
    expected_state = torch.uint8 if kind.endswith("8bit") else torch.float32
    state = optimizer.state[model.lora_A]
    assert state["state1" if "state1" in state else "exp_avg"].dtype == expected_state


def test_warmup_ratio_rounds_up_like_transformers():
    cfg = TrainConfig(scheduler={"kind": "linear", "warmup_ratio": 0.03}).scheduler
    assert warmup_steps(cfg, 300) == 9  # the seed: 3 epochs x 100 steps
    assert warmup_steps(TrainConfig(scheduler={"warmup_steps": 500}).scheduler, 300) == 300


@pytest.mark.parametrize(
    ("scheduler", "end"),
    [
        ({"kind": "constant", "warmup_steps": 4}, 1.0),
        ({"kind": "linear", "warmup_steps": 4}, 1 / 16),
        ({"kind": "cosine", "warmup_ratio": 0.2}, 0.5 * (1 + math.cos(math.pi * 15 / 16))),
        ({"kind": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, None),
    ],
)
def test_schedules_warm_up_then_follow_their_shape(scheduler, end):
    cfg = TrainConfig(scheduler=scheduler).scheduler
    total = 20
    factors = [lr_factor(cfg, step, total) for step in range(total)]
    assert factors[:5] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0])  # 4 warmup steps, peak at step 4
    assert all(later <= earlier + 1e-12 for earlier, later in zip(factors[4:], factors[5:], strict=False))
    if end is not None:
        assert factors[-1] == pytest.approx(end)
    else:
        assert min(factors[4:]) >= 0.1


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_scheduler_applies_the_factor_to_the_optimizer(kind):
    cfg = TrainConfig(optimizer={"lr": 1e-3}, scheduler={"kind": kind, "warmup_steps": 2})
    model = _Adapted()
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3 * lr_factor(cfg.scheduler, s, 10) for s in range(10)])
    assert all(not saved for saved in scheduler.state_dict()["lr_lambdas"])  # only numbers in checkpoints
