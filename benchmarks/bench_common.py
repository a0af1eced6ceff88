"""What every benchmark runner shares: fixed-length token rows, a step clock, memory, MFU, versions.

Runners (``ours.py``, ``peers/*.py``) import this module; it imports nothing heavy at module level, so
the harness can read it without loading torch.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = 790.0
"""bf16 dense peak of one H200 as measured (../shared/BENCHMARKS.md); MFU is relative to it."""

LORA = {"r": 16, "alpha": 32, "lr": 2e-4}
"""Adapter rank, alpha and learning rate every system uses in W2 and W3."""


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on ("-" when not installed)."""
    out = {}
    for name in (
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "accelerate",
        "liger-kernel",
        "unsloth",
        "trl",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def commit() -> str:
    """The tree measured: ``$QLORA_KIT_COMMIT`` when set (the device machine's copy of the tree carries a
    stale ``.git``), else ``git rev-parse`` (``-dirty`` when ``src`` changed)."""
    if os.environ.get("QLORA_KIT_COMMIT"):
        return os.environ["QLORA_KIT_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()  # fmt: skip
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def process_seconds() -> float:
    """Seconds since this process started, imports included (Linux: ``/proc``)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks after boot
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def token_rows(n: int, seq: int, vocab: int, seed: int = 0, distinct: int | None = None) -> list[list[int]]:
    """``n`` rows of ``seq`` random token ids below ``vocab``: the same rows for every system.

    With ``distinct``, only that many different rows, repeated: a model that trains on the same batch
    again and again must lower its loss, which is the proof that training happened (a fresh random
    batch every step would hide a small decrease in batch-to-batch noise). Speed does not depend on it.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, vocab, (distinct or n, seq), generator=gen).tolist()
    return [base[i % len(base)] for i in range(n)]


def sync(device: Any) -> None:
    """Wait for queued device work, so a clock read after it measures finished work."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepLog:
    """Per-step wall times (after a device sync), losses and gradient norms of one training run."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)

    def summary(self, warmup: int, tokens_per_step: int) -> dict[str, Any]:
        """Median step time of the steps after ``warmup``, throughput, and the proof of training."""
        timed = self.seconds[warmup:] or self.seconds
        median = statistics.median(timed)
        return {
            "s_per_step": round(median, 4),
            "step_seconds": [round(s, 4) for s in self.seconds],
            "cpu_s_per_step": round(statistics.median(self.cpu_seconds[warmup:] or self.cpu_seconds), 4),
            "tokens_per_s": round(tokens_per_step / median, 1),
            "loss_first": _round(self.losses[0] if self.losses else None),
            "loss_last": _round(self.losses[-1] if self.losses else None),
            "grad_norm": _round(self.grad_norms[-1] if self.grad_norms else None),
            "steps_timed": len(timed),
        }


def _round(x: float | None, digits: int = 5) -> float | None:
    return None if x is None else round(float(x), digits)


class Clock:
    """Step clock: ``start()`` before the first step, ``lap(log)`` after each; syncs the device first.

    Besides wall time it records this process's CPU time per step: on a shared CPU machine that is the
    work a step did, where wall time also counts the waits for other processes.
    """

    def __init__(self, device: Any):
        self.device = device
        self.last = self.last_cpu = 0.0

    def start(self) -> None:
        sync(self.device)
        self.last, self.last_cpu = time.perf_counter(), time.process_time()

    def lap(self, log: StepLog) -> None:
        sync(self.device)
        now, now_cpu = time.perf_counter(), time.process_time()
        log.seconds.append(now - self.last)
        log.cpu_seconds.append(now_cpu - self.last_cpu)
        self.last, self.last_cpu = now, now_cpu


def reset_peak(device: Any) -> None:
    """Start the peak-memory counters afresh (after loading, so peaks are the training's)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory(device: Any) -> dict[str, float | None]:
    """Peak allocated and reserved CUDA memory in GiB since the last :func:`reset_peak` (None on CPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return {"peak_gib": None, "peak_reserved_gib": None}
    return {
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
    }


def flops_per_token(config: Any, seq: int) -> float:
    """Useful training FLOPs per token of LoRA on a frozen base, recomputation not counted.

    4 x the parameters in matmuls (forward 2, backward input-gradients 2; the frozen weights get no
    gradient), lm_head included, plus causal attention: 2 matmuls (QK^T, AV) x 2 FLOPs x seq x hidden
    per layer in the forward, x3 with the backward, x0.5 for the causal mask = 6 x seq x hidden x
    layers. This gives the 31.6 GFLOP/token that ../shared/BENCHMARKS.md states for the 8B shape at
    2,048 tokens (its one-line formula, "3 x 2 x seq x hidden x layers x 0.5", leaves out one of the
    two attention matmuls and would give 30.8).
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * config.intermediate_size
    matmul = layers * (attn + mlp) + h * config.vocab_size
    return 4.0 * matmul + 6.0 * seq * h * layers


def mfu(tokens_per_s: float, config: Any, seq: int, device: Any) -> float | None:
    """Model FLOPs utilisation against :data:`PEAK_TFLOPS` (None off CUDA: that peak is an H200's)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return round(tokens_per_s * flops_per_token(config, seq) / (PEAK_TFLOPS * 1e12), 4)


def fake_oom_above(model: Any, max_tokens: int, broken_above: int | None = None) -> None:
    """Tiny mode only: raise ``torch.OutOfMemoryError`` when a forward gets more than ``max_tokens``
    tokens (and, above ``broken_above``, the kind of memory error after which a CUDA context may be
    unusable), so the W3 search's out-of-memory and restart paths run on the CPU too."""
    import torch

    def check(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        if broken_above and ids.numel() > broken_above:
            raise RuntimeError(f"CUDA error: out of memory (tiny mode, fake: {ids.numel()} tokens)")
        if ids.numel() > max_tokens:
            raise torch.OutOfMemoryError(f"tiny mode: {ids.numel()} tokens > fake limit {max_tokens}")

    model.register_forward_pre_hook(check, with_kwargs=True)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is running out of device memory."""
    import torch

    while exc is not None:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_after_oom(model: Any, device: Any) -> None:
    """Drop gradients and cached blocks after an out-of-memory step, so the next probe starts clean."""
    import gc

    import torch

    for param in model.parameters():
        param.grad = None
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
