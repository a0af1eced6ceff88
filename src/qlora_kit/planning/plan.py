"""Plans for a run config: will a training step fit on this GPU, how fast, and with which settings.

:func:`plan_run` answers for the settings a config asks for; :func:`choose_settings` picks the cheapest
that fit (checkpointing off, else on, else on with activation offload) and the largest micro-batch
in tokens under them. Both need only the model's ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from qlora_kit.planning.from_config import adapter_of, dtype_bytes_of, settings_of, shape_of
from qlora_kit.planning.memory import (
    GIB,
    HOST_SHARE,
    Adapter,
    MemoryEstimate,
    Settings,
    estimate_memory,
    host_ram,
    pins_too_much,
)
from qlora_kit.planning.settings import fewest_layers, layouts, some_layers
from qlora_kit.planning.shape import ModelShape
from qlora_kit.planning.speed import H200_PEAK_TFLOPS, SpeedEstimate, estimate_speed

MARGIN = 0.10
"""A plan `fits` when it needs at most 90% of the GPU's memory; up to 100% it is `tight`."""
_MAX_TOKENS = 1 << 24


@dataclass
class Plan:
    """Predicted memory and speed of one micro-step of a run, and whether it fits the GPU."""

    model: str
    shape: ModelShape = field(repr=False)
    settings: Settings
    rows: int
    seq: int
    memory: MemoryEstimate
    speed: SpeedEstimate
    gpu_memory_bytes: int | None = None
    max_tokens: int | None = None
    """The largest micro-batch (tokens) that fits with a margin under these settings."""
    host_memory_bytes: int | None = None
    """Host memory that offload's pinned buffers are judged against (None: not judged)."""

    @property
    def tokens(self) -> int:
        """Tokens per micro-step (rows x sequence length)."""
        return self.rows * self.seq

    @property
    def verdict(self) -> str | None:
        """``fits``, ``tight`` or ``does not fit``; None without a GPU memory size."""
        if self.gpu_memory_bytes is None:
            return None
        return _verdict(self.memory, self.gpu_memory_bytes, self.host_memory_bytes)

    @property
    def fits_gpu(self) -> bool:
        """Whether the GPU side fits with the margin, whatever the host side (None GPU size: False)."""
        return self.gpu_memory_bytes is not None and _verdict(self.memory, self.gpu_memory_bytes) == "fits"

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (GiB rounded to 3 decimals)."""
        gib = lambda n: round(n / GIB, 3)  # noqa: E731
        return {
            "model": self.model, "model_type": self.shape.model_type, "settings": asdict(self.settings),
            "rows": self.rows, "seq": self.seq, "tokens": self.tokens,
            "components_gib": {k: gib(v) for k, v in self.memory.components.items()},
            "peak_phase": self.memory.phase, "peak_allocated_gib": gib(self.memory.peak_allocated),
            "paged_optimizer_gib": gib(self.memory.paged_bytes), "needed_gib": gib(self.memory.needed),
            "gpu_memory_gib": None if self.gpu_memory_bytes is None else gib(self.gpu_memory_bytes),
            "host_memory_gib": None if self.host_memory_bytes is None else gib(self.host_memory_bytes),
            "verdict": self.verdict, "max_tokens": self.max_tokens, "host_offload_gib": gib(self.memory.host_bytes),
            "tokens_per_s": round(self.speed.tokens_per_s), "step_seconds": round(self.speed.step_seconds, 3),
            "mfu": round(self.speed.mfu, 4), "notes": list(self.memory.notes),
        }  # fmt: skip

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """A small table for a terminal."""
        s, m = self.settings, self.memory
        lines = [
            f"{self.model} ({self.shape.model_type}, {self.shape.layers} layers, hidden {self.shape.hidden}, "
            f"vocab {self.shape.vocab})",
            f"checkpointing {s.describe(self.shape.layers)}, activation offload {s.describe_offload(self.shape.layers)}, "
            f"loss {s.loss}; micro-batch {self.rows} x {self.seq:,} = {self.tokens:,} tokens",
            "",
        ]
        rows = [(name, v) for name, v in m.components.items()]
        rows[-1] = (f"{rows[-1][0]} ({m.phase})", rows[-1][1])
        rows += [("peak allocated (max_memory_allocated)", m.peak_allocated),
                 ("+ allocator slack, CUDA context, paged state", m.needed - m.peak_allocated)]  # fmt: skip
        width = max(len(name) for name, _ in rows) + 2
        lines += [f"{name:<{width}}{v / GIB:>8.2f} GiB" for name, v in rows]
        verdict = f" of {self.gpu_memory_bytes / GIB:.1f} GiB: {self.verdict}" if self.verdict else ""
        lines.append(f"{'needed':<{width}}{m.needed / GIB:>8.2f} GiB{verdict}")
        if m.host_bytes:
            host = (
                ""
                if self.host_memory_bytes is None
                else f" of {self.host_memory_bytes / GIB:.1f} GiB host memory"
            )
            lines.append(f"{'pinned host memory (offload)':<{width}}{m.host_bytes / GIB:>8.2f} GiB{host}")
        sp = self.speed
        lines += ["", f"~{sp.tokens_per_s:,.0f} tokens/s ({sp.step_seconds:.2f} s per micro-step), MFU {sp.mfu:.1%} "
                  "(BENCHMARKS basis) at the assumed efficiency"]  # fmt: skip
        if sp.host_seconds >= sp.step_seconds:  # the device would finish first: bigger passes cost no more
            lines.append("bound by the host's work per pass: more tokens per pass would run faster")
        if self.max_tokens is not None:
            lines.append(f"largest micro-batch that fits with these settings: {self.max_tokens:,} tokens")
        lines += [f"note: {n}" for n in m.notes]
        return "\n".join(lines)


def plan_run(
    cfg: Any,
    *,
    gpu_memory_gib: float | None = None,
    seq_tokens: int | None = None,
    settings: Settings | None = None,
    shape: ModelShape | None = None,
    efficiency: float | None = None,
    peak_tflops: float = H200_PEAK_TFLOPS,
    host_memory_gib: float | None = None,
    adapter: Adapter | None = None,
) -> Plan:
    """Plan one micro-step of ``cfg``: ``train.micro_batch_size`` rows of ``seq_tokens`` tokens.

    Args:
        cfg: a :class:`~qlora_kit.config.RunConfig`.
        gpu_memory_gib: GPU memory to judge against (default: cuda:0's, when there is one), capped by
            ``train.memory_budget_gib``.
        seq_tokens: tokens per row (default: ``data.max_length``).
        settings: override the config's checkpointing / offload / loss.
        shape: the model's shape, when already built (default: from ``model.name_or_path``'s config.json).
        efficiency: executed FLOP/s over peak for the speed estimate (default: measured, by model size).
        peak_tflops: the GPU's bf16 dense peak.
        host_memory_gib: host memory to judge offload's pinned buffers against (at most
            :data:`~qlora_kit.planning.memory.HOST_SHARE` of it; default: this machine's when the GPU
            judged is this machine's, else not judged).
        adapter: override what the planner reads from ``cfg.adapter`` (e.g. ``light_dropout=False`` for
            a model adapted with PEFT's own dropout).
    """
    shape = shape or shape_of(cfg)
    if settings is None and "auto" in (cfg.train.grad_checkpointing, cfg.train.activation_offload):
        return choose_settings(cfg, gpu_memory_gib=gpu_memory_gib, seq_tokens=seq_tokens, shape=shape,
                               host_memory_gib=host_memory_gib, adapter=adapter)  # fmt: skip
    settings = settings or settings_of(cfg, shape)
    seq = seq_tokens or cfg.data.max_length
    rows = cfg.train.micro_batch_size
    adapter, dtype_bytes = adapter or adapter_of(cfg, shape), dtype_bytes_of(cfg)
    memory = estimate_memory(shape, cfg.quant, adapter, settings, rows * seq, dtype_bytes)
    speed = estimate_speed(shape, adapter, settings, rows * seq, seq, efficiency=efficiency,
                           peak_tflops=peak_tflops, dtype_bytes=dtype_bytes)  # fmt: skip
    gpu = _gpu_bytes(gpu_memory_gib, cfg.train.memory_budget_gib)
    host = _host_bytes(host_memory_gib, gpu_memory_gib)
    plan = Plan(
        cfg.model.name_or_path, shape, settings, rows, seq, memory, speed, gpu, host_memory_bytes=host
    )
    if gpu is not None:
        plan.max_tokens = _max_tokens(
            lambda t: estimate_memory(shape, cfg.quant, adapter, settings, t, dtype_bytes), gpu, host
        )
    ram = host if host is not None else host_ram()
    if pins_too_much(memory.host_bytes, ram):
        whose = "the host's" if host is not None else "this machine's"
        memory.notes.append(f"offload pins {memory.host_bytes / GIB:.0f} GiB of host memory, more than "
                            f"{HOST_SHARE:.0%} of {whose} {ram / GIB:.0f} GiB")  # fmt: skip
    if cfg.adapter.use_dora:
        memory.notes.append("adapter.use_dora: DoRA's extra activations and weight norms are not modelled")
    return plan


def choose_settings(
    cfg: Any,
    *,
    gpu_memory_gib: float | None = None,
    seq_tokens: int | None = None,
    shape: ModelShape | None = None,
    loss: str | None = None,
    host_memory_gib: float | None = None,
    adapter: Adapter | None = None,
) -> Plan:
    """The cheapest settings under which a micro-step of ``cfg`` fits, as a :class:`Plan` (``adapter`` as
    :func:`plan_run`'s).

    Tried in order of speed, among those the config allows (`auto` allows both): checkpointing off,
    on for the fewest decoder layers that fit (`auto` checkpointing only), on for all, on for all with the
    fewest layers offloaded that fit (`auto` offload only), on with every layer offloaded; the loss stays as
    configured (or ``loss``). The first whose plan `fits` (with the 10% margin; offload's pinned memory
    within the host's share when it is judged) is returned; if none does, the last (its ``verdict`` says
    so, its ``max_tokens`` says how many tokens would fit).
    """
    shape = shape or shape_of(cfg)
    base = settings_of(cfg, shape)
    if loss is not None:
        base = replace(base, loss=loss)

    def plan_with(settings: Settings) -> Plan:
        return plan_run(cfg, gpu_memory_gib=gpu_memory_gib, seq_tokens=seq_tokens, settings=settings,
                        shape=shape, host_memory_gib=host_memory_gib, adapter=adapter)  # fmt: skip

    plan = None
    for checkpointing, offload, some in layouts(cfg.train.grad_checkpointing, cfg.train.activation_offload):
        settings = replace(base, grad_checkpointing=checkpointing, activation_offload=offload)
        if some:
            if _gpu_bytes(gpu_memory_gib, cfg.train.memory_budget_gib) is None:
                continue  # nothing to fit: checkpoint (offload) every layer, as without a plan
            chosen = _some_layers(plan_with, settings, shape)
            if chosen is not None:
                return chosen
            continue
        plan = plan_with(settings)
        if plan.verdict in (None, "fits"):
            return plan
    assert plan is not None
    return plan


def _some_layers(plan_with: Any, settings: Settings, shape: ModelShape) -> Plan | None:
    """The plan with the fewest decoder layers checkpointed (with offload: offloaded) that fits (with the
    margin), or None (some layers are not enough)."""
    # Search on the GPU side alone, which falls monotonically as layers are added; offloading more only
    # pins more host memory, so if the fewest that fit the GPU are too many for the host, none will do.
    k = fewest_layers(lambda s: plan_with(s).fits_gpu, settings, shape.layers)
    chosen = None if k is None else plan_with(some_layers(settings, k))
    return chosen if chosen is not None and chosen.verdict == "fits" else None


def _gpu_bytes(gpu_memory_gib: float | None, budget_gib: float | None = None) -> int | None:
    """``--gpu-memory`` (else cuda:0's memory), capped by ``train.memory_budget_gib``."""
    if gpu_memory_gib is not None:
        total: int | None = int(gpu_memory_gib * GIB)
    elif torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
    else:
        total = None
    if not budget_gib:
        return total
    budget = int(budget_gib * GIB)
    return budget if total is None else min(total, budget)


def _verdict(memory: MemoryEstimate, gpu: int, host: int | None = None) -> str:
    if pins_too_much(memory.host_bytes, host):
        return "does not fit"  # the pinned buffers: what the Trainer's `auto` refuses too
    if memory.needed <= (1 - MARGIN) * gpu:
        return "fits"
    return "tight" if memory.needed <= gpu else "does not fit"


def _host_bytes(host_memory_gib: float | None, gpu_memory_gib: float | None) -> int | None:
    """``--host-memory``; else this machine's memory when the GPU judged is this machine's; else None."""
    if host_memory_gib is not None:
        return int(host_memory_gib * GIB)
    return host_ram() if gpu_memory_gib is None and torch.cuda.is_available() else None


def _max_tokens(memory_at: Any, gpu: int, host: int | None = None) -> int:
    """The largest multiple of 64 tokens whose plan fits with the margin (0 if none)."""
    lo, hi = 0, _MAX_TOKENS // 64
    while lo < hi:  # memory grows with tokens: bisect
        mid = (lo + hi + 1) // 2
        if _verdict(memory_at(64 * mid), gpu, host) == "fits":
            lo = mid
        else:
            hi = mid - 1
    return 64 * lo
