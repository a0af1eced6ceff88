"""bitsandbytes optimizers on a CUDA device without a synchronisation per parameter: the same update to
the bit as bitsandbytes' own step, paged state included, with one device synchronisation per step for
paged state and none otherwise after the first step (auto-skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlora_kit.config import TrainConfig
from qlora_kit.training.optim import param_groups

pytestmark = pytest.mark.gpu


def _lora_like(device):
    torch.manual_seed(0)
    # tensors of 2**17 elements: bitsandbytes pages state from 1e5 elements
    return nn.Sequential(nn.Linear(1024, 128, bias=False), nn.Linear(128, 1024, bias=False)).to(device)


@pytest.mark.parametrize(("kind", "syncs_per_step"), [("adamw_8bit", 0), ("paged_adamw_8bit", 1)])
def test_same_update_as_bitsandbytes_with_at_most_one_sync(gpu_device, kind, syncs_per_step, monkeypatch):
    import bitsandbytes as bnb

    cfg = TrainConfig(optimizer={"kind": kind, "lr": 1e-2}).optimizer
    ours_model, stock_model = _lora_like(gpu_device), _lora_like(gpu_device)
    ours = cfg.build().create(ours_model)
    stock_class = getattr(bnb.optim, type(cfg.build()).bnb_class)
    stock = stock_class(param_groups(stock_model, 0.0), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    real_sync, counted = torch.cuda.synchronize, []

    def counting_sync(*args, **kwargs):
        counted.append(1)
        real_sync(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "synchronize", counting_sync)
    for model, optimizer in ((ours_model, ours), (stock_model, stock)):
        gen = torch.Generator(device=gpu_device).manual_seed(3)
        for _ in range(3):
            counted.clear()  # count the last step's: the first also allocates (paged) state
            optimizer.zero_grad()
            model(torch.randn(8, 1024, device=gpu_device, generator=gen)).pow(2).mean().backward()
            optimizer.step()
        if optimizer is ours:
            assert len(counted) == syncs_per_step
        else:
            assert len(counted) >= 2  # bitsandbytes waits after each of the 2 parameters
    for a, b in zip(ours_model.parameters(), stock_model.parameters(), strict=True):
        assert torch.equal(a, b)
