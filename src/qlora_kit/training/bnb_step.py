"""bitsandbytes optimizers without a device synchronisation per parameter.

bitsandbytes' ``Optimizer8bit.step`` (0.50) calls ``sync_gpu(p)``, a ``torch.cuda.synchronize()``, after
updating each parameter, paged state or not. Its kernels (and the paged state's prefetches) run in stream
order, so those waits order nothing; they stall the host twice per LoRA layer, 451 device
synchronisations per step on the Llama-3-8B shape with r16 all-linear (torch.profiler on an H200, run
2026-11-30p), and the GPU idles while the host queues the next step's first kernels.

:func:`one_sync_step` subclasses a bitsandbytes optimizer class so that its ``step`` runs bitsandbytes' own
loop (its state handling, overrides and kernels unchanged) with the per-parameter wait skipped, then
synchronises once if the state is paged, as bitsandbytes does at the end of its loop. The update is the
same to the bit (tested on the CPU and, paged and unpaged, on the GPU).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch


@functools.cache
def one_sync_step(cls: type) -> type:
    """``cls`` (a bitsandbytes ``Optimizer8bit`` subclass) with at most one device synchronisation per step.

    The subclass keeps ``cls``'s name, so logs and ``type(opt).__name__`` read the same; it is a subclass,
    so ``isinstance(opt, cls)`` holds and checkpoints load into either."""

    class OneSyncStep(cls):  # type: ignore[misc, valid-type]
        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            with _per_parameter_sync_skipped():
                loss = super().step(closure)
            if getattr(self, "is_paged", False):
                _sync_devices_of(self)
            return loss

    OneSyncStep.__name__ = cls.__name__
    OneSyncStep.__qualname__ = cls.__qualname__
    OneSyncStep.__doc__ = cls.__doc__
    return OneSyncStep


def _no_sync(tensor: torch.Tensor) -> None:
    """Stands in for bitsandbytes' ``sync_gpu`` inside a step."""


@contextlib.contextmanager
def _per_parameter_sync_skipped() -> Iterator[None]:
    """bitsandbytes' optimizer module with its ``sync_gpu`` swapped for a no-op (restored on exit). A
    bitsandbytes without that name is left alone: its step then runs as it is."""
    import bitsandbytes.optim.optimizer as bnb_optimizer

    original = getattr(bnb_optimizer, "sync_gpu", None)
    if original is None:
        yield
        return
    bnb_optimizer.sync_gpu = _no_sync
    try:
        yield
    finally:
        bnb_optimizer.sync_gpu = original


def _sync_devices_of(optimizer: torch.optim.Optimizer) -> None:
    """One ``torch.cuda.synchronize()`` if any parameter of ``optimizer`` is on a CUDA device."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.device.type == "cuda":
                torch.cuda.synchronize(param.device)
                return
