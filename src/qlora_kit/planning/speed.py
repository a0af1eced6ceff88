"""Tokens per second of a QLoRA step, from FLOPs per token at an assumed hardware efficiency.

Two counts of FLOPs per token:

- **useful** (``../shared/BENCHMARKS.md``'s MFU basis, what every reported MFU uses): 4 x the frozen
  matmul parameters, output head included (forward + input-gradient backward; no weight gradient),
  plus ``3 x 2 x seq x hidden x layers x 0.5`` for causal attention. LoRA and recomputation are not
  counted.
- **executed** (what the time estimate divides by): the same matmuls, plus 6 x the LoRA parameters,
  causal attention counted as executed (``6 x seq x q_dim x layers``: QK^T and AV forward, twice that
  backward, half of it masked out; twice BENCHMARKS' term), plus recomputation: with checkpointing one
  more forward of every decoder layer (``2 x layer matmul params + 2 x LoRA + 2 x seq x q_dim x
  layers``), with the chunked loss one more output-head forward (``2 x vocab x hidden``).

The efficiency (executed FLOP/s over the GPU's peak) comes from measurements on one H200 (torch 2.11,
no checkpointing, 2 x 2048 tokens for 8B, 4 x 2048 for 1B, paged AdamW 8-bit, r16 all-linear):

- Llama-3-8B shape (hidden 4096): 9,371 tokens/s at 31.9 executed GFLOP/token: 0.378 of 790 TFLOP/s.
- Llama-3.2-1B shape (hidden 2048): 38,678 tokens/s: 0.265 (small matmuls use the GPU less well).

:func:`default_efficiency` interpolates linearly in the hidden size between them (clamped outside).
With it the plans predict (measured in brackets; the two points above are the fit, these are not):
8B with checkpointing 6,427 tokens/s (6,157), 8B at 1 x 65,536 tokens 2,642 (~2,430: 27 s per step),
1B with checkpointing 27,853 (28,882). Pass your own efficiency for
another GPU or another kernel set.

A pass is also bounded by the host's work, per decoder layer and pass, not per token
(:data:`HOST_SECONDS_PER_LAYER`): it decides small passes of a large model (the 8B shape's 2,048-token passes
ran at 9,331 tokens/s where the device alone would allow ~11,500).
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.planning.memory import Adapter, Settings, lora_targets
from qlora_kit.planning.shape import ModelShape
from qlora_kit.training.kernels import LONG_ROW_TOKENS

H200_PEAK_TFLOPS = 790.0
"""bf16 dense peak measured on the H200 (BENCHMARKS.md)."""
MEASURED_EFFICIENCY = ((2048, 0.265), (4096, 0.378))
"""(hidden size, executed FLOP/s over peak) measured on the H200 (see the module docstring)."""
COMPILED_EFFICIENCY = ((2048, 0.313), (4096, 0.466))
"""The same with the decoder layers compiled (``train.compile``), H200 runs 2026-11-30i and j, the mean of
two runs each: 8B 11,053 and 12,035 tokens/s (eager in run i: 8,384), 1B 45,202 and 46,022 (eager 41,436)."""
LONG_ROW_ATTENTION_TFLOPS = 550.0
"""cuDNN causal attention on one long row, the 8B shape's 32/8 heads of 128 in bf16, one H200 (torch 2.11,
2026-11-30, ``benchmarks/sdpa_long.py``): forward + backward at 546-564 TFLOP/s, forward alone 570-611, at
65,536-131,072 tokens, FLOPs counted as 2 x seq x q_dim per token and layer forward, 3.5 times that with the
backward (flash: 327-334). Rows of :data:`~qlora_kit.training.kernels.LONG_ROW_TOKENS` or more train with
it; shorter rows' attention is in the fitted efficiency."""
HOST_SECONDS_PER_LAYER = 6.9e-3
"""Host time of one decoder layer's forward and backward in one pass (Python, dispatch, launches), which
bounds a pass whose device work is shorter: 8B shape, compiled layers, 7 adapted 4-bit linears per layer,
one H200 machine (run 2026-11-30o): two 2,048-token passes took 0.439 s a step, 0.220 s each, where the device
was busy 0.184 s per pass (run p's profile). Eager layers cost more: :data:`HOST_SECONDS_PER_EAGER_LAYER`."""
HOST_SECONDS_PER_EAGER_LAYER = 9.0e-3
"""The same for an eager (not compiled) layer: SmolLM2-135M's shape (30 layers, 7 adapted 4-bit linears each,
torch AdamW), 8 x 32 tokens, one H200 machine (benchmarks/gpu/call28a.sh): 0.27 s a step, all of it host
time, the optimizer and loss included. The same step compiled took 0.133 s (4.4 ms a layer, all in), so
the compiled figure above, fitted on the 8B shape, is conservative for small layers."""
HOST_SECONDS_PER_RECOMPUTED_LAYER = 6.1e-3
"""Host time of one checkpointed layer's recomputed forward, same run: 18 of 32 layers checkpointed in
2,048-token passes took 0.330 s a pass (6,212 tokens/s)."""
HOST_LINK_GBPS = 25.0
"""Assumed effective pinned host<->device copy rate, GB/s (PCIe Gen5 x16 reaches ~50); measure it."""


@dataclass(frozen=True)
class SpeedEstimate:
    """Predicted speed of one micro-step."""

    tokens_per_s: float
    step_seconds: float
    useful_flops_per_token: float
    """BENCHMARKS.md's basis."""
    executed_flops_per_token: float
    mfu: float
    """Useful FLOP/s over peak (BENCHMARKS.md's MFU)."""
    offload_seconds: float = 0.0
    """Host copies of a step (hidden behind compute while shorter than it)."""
    host_seconds: float = 0.0
    """The host's work for the pass (:data:`HOST_SECONDS_PER_LAYER`): the step's floor when the device's
    work is shorter."""


def estimate_speed(
    shape: ModelShape,
    adapter: Adapter,
    settings: Settings,
    tokens: int,
    seq: int,
    *,
    efficiency: float | None = None,
    peak_tflops: float = H200_PEAK_TFLOPS,
    dtype_bytes: int = 2,
) -> SpeedEstimate:
    """Tokens/s of a micro-step of ``tokens`` tokens in sequences of ``seq`` (packed rows: the example length).

    ``efficiency`` defaults to :func:`default_efficiency` of the shape.
    """
    efficiency = efficiency or default_efficiency(shape, settings.compiles)
    layer_matmul = sum(lin.numel for lin in shape.linears)
    lora = sum(
        adapter.r * (lin.in_features + lin.out_features)
        for lin in lora_targets(shape, adapter.target_modules)
    )
    useful = 4 * (layer_matmul + shape.head.numel) + 3 * seq * shape.hidden * shape.layers
    attention = 6 * seq * shape.q_dim * shape.layers  # causal: half of 12 x seq x q_dim per layer
    share = settings.checkpointed(shape.layers) / shape.layers
    executed = 4 * (layer_matmul + shape.head.numel) + 6 * lora + attention
    executed += share * (2 * layer_matmul + 2 * lora + attention / 3)  # checkpointed layers: forward twice
    if settings.loss == "chunked":
        executed += 2 * shape.head.numel
    rate = efficiency * peak_tflops * 1e12
    compute = tokens * executed / rate
    if seq >= LONG_ROW_TOKENS:  # attention dominates: time it at the rate of the kernel training picks
        fitted = (1 + share / 3) * attention / rate
        forward = 2 * seq * shape.q_dim * shape.layers
        compute += tokens * (forward * (3.5 + share) / (LONG_ROW_ATTENTION_TFLOPS * 1e12) - fitted)
    offload = 0.0
    if settings.offloaded(shape.layers):  # out in the forward pass, back in the backward pass
        moved = 2 * settings.offloaded(shape.layers) * tokens * shape.hidden * dtype_bytes
        offload = moved / (HOST_LINK_GBPS * 1e9)
    host = shape.layers * (HOST_SECONDS_PER_LAYER if settings.compiles else HOST_SECONDS_PER_EAGER_LAYER)
    host += settings.checkpointed(shape.layers) * HOST_SECONDS_PER_RECOMPUTED_LAYER
    step = max(compute, offload, host)
    return SpeedEstimate(
        tokens_per_s=tokens / step, step_seconds=step, useful_flops_per_token=useful,
        executed_flops_per_token=executed, mfu=tokens * useful / step / (peak_tflops * 1e12),
        offload_seconds=offload, host_seconds=host,
    )  # fmt: skip


def default_efficiency(shape: ModelShape, compiled: bool = False) -> float:
    """Executed FLOP/s over peak for ``shape``: the H200 measurements (of compiled layers when
    ``compiled``), interpolated by hidden size."""
    (h0, e0), (h1, e1) = COMPILED_EFFICIENCY if compiled else MEASURED_EFFICIENCY
    x = min(max(shape.hidden, h0), h1)
    return e0 + (e1 - e0) * (x - h0) / (h1 - h0)
