"""Peak GPU memory of a training step, by component, from a :class:`~qlora_kit.planning.shape.ModelShape`.

The model is what ``torch.cuda.max_memory_allocated`` shows, plus what it does not (CUDA context,
allocator slack). Everything scales with shapes; the constants below say where they come from.

**Weights.** bitsandbytes 4-bit: 0.5 B per element of each converted linear, plus per linear its
quantization state (``bitsandbytes.functional.quantize_4bit``, blocks of 64): absmax in fp32 (4 B per
block), or with double quantization 1 B per block plus the second level (fp32 absmax per 256 blocks, a
256-entry fp32 code, an fp32 offset), and the 16-entry fp32 NF4/FP4 code. Everything else
(embeddings, norms, biases, the output head; a tied head once) in the compute dtype, buffers as they are.

**Adapter.** LoRA A/B in fp32 (``AdapterBuilder``), fp32 gradients, their bf16 autocast copies, and the
optimizer state: 8 B/param for 32-bit AdamW; bitsandbytes 8-bit AdamW 2 B/param + 2 fp32 absmax per
256-block for tensors of >= 4096 elements (smaller ones are 32-bit). Paged optimizers put tensors of
>= 1e5 elements in CUDA unified memory, outside torch's allocator (not in max_memory_allocated).

**Activations** (per token, compute dtype of ``a`` bytes, SDPA flash/efficient attention, PEFT LoRA under
autocast, frozen base whose matmuls save no input) that one decoder layer saves for backward:

- each RMSNorm: its fp32 input copy and rsqrt: ``4h + 4`` (frozen weight: the bf16 product saves nothing)
- attention: q, k, v, output ``a(2 q_dim + 2 kv_dim)``, fp32 logsumexp ``4 heads``
- gated MLP: gate output, act(gate), up output: ``3aI``
- LoRA with PEFT's dropout modules (dropout > 0; the library's own dropout falls back to them in compiled
  layers): per target the dropout mask (``mask`` B: 1 on CUDA's fused dropout, ``a`` on CPU) and the
  dropped-out input ``a d_in``. Dropout 0, or the library's light dropout
  (:mod:`~qlora_kit.model.lora_dropout`): each distinct input once (q/k/v share one, gate/up one, o_proj
  reads the attention output SDPA keeps anyway). Plus ``a r`` per target (lora_B's input).

For the Llama-3-8B shape this is 256,360 B/token/layer with PEFT's dropout (0.05), 184,680 with dropout 0
or the light dropout, checked to the byte against saved-tensor hooks on CPU (``tests/unit/test_planning.py``).
Outside the layers: the final norm ``4h + 4`` and RoPE cos/sin. With checkpointing a layer keeps its input
(``a h``). Of the offloaded layers' inputs (the first ``offload_layers``, or all) only those in flight stay:
the one in use and the one prefetched (the library never makes the embeddings' output require grad, so
the first layer's input is offloaded too).

**Peak phase.** The standard loss peaks in the log-softmax backward: its saved fp32 output, the fp32
gradient coming in and the one going out, ``12 V`` B/token, on top of everything stored. With
checkpointing the other candidate is the last layer's backward: the recomputed layer's saved tensors
plus backward transients (estimated ``3a(I + h)`` B/token plus one dequantized weight; calibrate on GPU).

**Compiled layers** (``train.compile``) save ``a(I + 2h)`` B/token/layer fewer (inductor recomputes
``act(gate) * up``), and with the hashed dropout their LoRA inputs too (:func:`lora_inputs_per_token`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from qlora_kit.planning.settings import Adapter, Settings
from qlora_kit.planning.shape import Linear, ModelShape, ceil_div

GIB = 2**30
BLOCK_4BIT = 64  # bitsandbytes quantize_4bit default blocksize
BLOCK_NESTED = 256  # blocksize of the double-quantized absmax (quantize_blockwise)
BLOCK_OPTIM = 256  # bitsandbytes 8-bit optimizer state blocksize
MIN_8BIT_SIZE = 4096  # bitsandbytes: smaller tensors get 32-bit optimizer state
MIN_PAGED_SIZE = 100_000  # bitsandbytes: smaller state tensors are never paged
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
"""CUDA context, cuBLAS/cuDNN handles and workspaces: outside torch's counters. Assumed; calibrate
on the GPU (``nvidia-smi`` used memory minus ``torch.cuda.memory_reserved`` in an idle process)."""
HOST_SHARE = 0.7
"""Most of the host's memory that offloading may pin: the process, the data and the OS need the rest."""
ALLOCATOR_SLACK = 0.05
"""Reserved minus allocated at the peak, as a fraction of the peak. Assumed; calibrate on the GPU
(``max_memory_reserved / max_memory_allocated - 1`` of the W2/W3 runs)."""
LOSS_CHUNK_TOKENS = 512
"""Rows per chunk of the chunked loss for a 128k vocabulary (``head_loss.default_chunk_tokens``)."""
PLAIN_HEAD_LOGITS_BYTES = 512 * 2**20
"""The fused loss's plain-head bound (``head_loss.PLAIN_HEAD_LOGITS_BYTES``; not imported from there:
training imports planning, so planning keeps its own copy, checked equal by a test)."""


@dataclass
class MemoryEstimate:
    """Predicted peak memory of one training micro-step, by component (bytes)."""

    components: dict[str, int]
    """In the order they are listed; their sum is :attr:`peak_allocated`."""
    phase: str
    """Where the peak falls: ``loss backward`` or ``layer backward``."""
    paged_bytes: int = 0
    """Optimizer state in CUDA unified memory (not in max_memory_allocated)."""
    host_bytes: int = 0
    """Pinned host memory holding offloaded layer inputs."""
    notes: list[str] = field(default_factory=list)

    @property
    def peak_allocated(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should report."""
        return sum(self.components.values())

    @property
    def needed(self) -> int:
        """GPU memory the step needs: the peak plus allocator slack, CUDA context and paged state."""
        return int(self.peak_allocated * (1 + ALLOCATOR_SLACK)) + CUDA_CONTEXT_BYTES + self.paged_bytes


# ------------------------------------------------------------------------------------ weights


def weight_bytes(shape: ModelShape, quant_kind: str, double_quant: bool, dtype_bytes: int) -> dict[str, int]:
    """Bytes of the frozen base: quantized linears, their quantization state, and the 16-bit rest."""
    packed = consts = other = 0
    for lin in shape.linears:
        if quant_kind == "bnb_4bit" and lin.quantized:
            packed += ceil_div(lin.numel, 2)
            consts += _quant_state_4bit(lin.numel, double_quant)
        elif quant_kind == "bnb_8bit" and lin.quantized:
            packed += lin.numel
            consts += 4 * lin.out_features  # LLM.int8 row scales (SCB), fp32
        else:
            other += lin.numel * dtype_bytes
    # the head once: a tied head is the embedding matrix, which `other_params` then leaves out
    other += (shape.other_params - shape.fp32_params + shape.head.numel) * dtype_bytes + 4 * shape.fp32_params
    other += shape.buffer_bytes
    if quant_kind == "none":
        return {"16-bit weights": other}
    return {"quantized weights": packed, "quantization constants": consts, "16-bit weights": other}


def _quant_state_4bit(numel: int, double_quant: bool) -> int:
    blocks = ceil_div(numel, BLOCK_4BIT)
    code = 16 * 4  # the NF4/FP4 value table, one per linear
    if not double_quant:
        return 4 * blocks + code
    nested = 4 * ceil_div(blocks, BLOCK_NESTED) + 256 * 4 + 4  # fp32 absmax2, 8-bit code table, offset
    return blocks + nested + code


# ------------------------------------------------------------------------------------ adapter


def lora_targets(shape: ModelShape, target_modules: list[str] | str) -> list[Linear]:
    """The linears LoRA wraps: every one for ``all-linear``, else those matching a name (peft's rule)."""
    if target_modules == "all-linear":
        return list(shape.linears)
    names = [target_modules] if isinstance(target_modules, str) else target_modules
    return [lin for lin in shape.linears if any(lin.name == t or lin.name.endswith(f".{t}") for t in names)]


def adapter_bytes(shape: ModelShape, adapter: Adapter, dtype_bytes: int) -> tuple[dict[str, int], int]:
    """``({component: bytes}, paged bytes)`` of the trainable parameters, gradients and optimizer state."""
    tensors = []  # (numel, bytes per element) of each trainable tensor
    for lin in lora_targets(shape, adapter.target_modules):
        tensors += [(adapter.r * lin.in_features, 4), (adapter.r * lin.out_features, 4)]
    for name in adapter.modules_to_save:
        tensors += [
            (lin.numel, dtype_bytes) for lin in (*shape.linears, shape.head) if lin.name.endswith(name)
        ]
    params = sum(n * b for n, b in tensors)
    casts = sum(n * dtype_bytes for n, b in tensors if b == 4)  # autocast's 16-bit copies
    state = paged = 0
    for numel, elt in tensors:
        size, pageable = _optimizer_state(numel, elt, adapter.optimizer)
        if pageable and numel >= MIN_PAGED_SIZE:
            paged += size
        else:
            state += size
    parts = {"adapter params + grads": 2 * params, "adapter 16-bit copies": casts, "optimizer state": state}
    return parts, paged


def _optimizer_state(numel: int, elt: int, kind: str) -> tuple[int, bool]:
    paged = kind.startswith("paged_")
    if kind.endswith("8bit") and numel >= MIN_8BIT_SIZE:
        return 2 * numel + 2 * 4 * ceil_div(numel, BLOCK_OPTIM), paged
    if kind == "adamw_torch":
        return 2 * numel * elt, False
    return 2 * numel * 4, paged  # bitsandbytes 32-bit state


# -------------------------------------------------------------------------------- activations


def layer_saved_per_token(
    shape: ModelShape, adapter: Adapter, act_bytes: int = 2, mask_bytes: int = 1
) -> int:
    """Bytes one decoder layer saves for backward per token (see the module docstring)."""
    a, h, inter = act_bytes, shape.hidden, shape.intermediate
    norms = 2 * (4 * h + 4)
    attention = a * (2 * shape.q_dim + 2 * shape.kv_dim) + 4 * shape.heads
    mlp = 3 * a * inter
    targets = _layer_targets(shape, adapter)
    if adapter.dropout > 0 and not adapter.light_dropout:
        lora = sum((mask_bytes + a) * lin.in_features for lin in targets)
    else:
        lora = lora_inputs_per_token(shape, adapter, a)
    return norms + attention + mlp + lora + a * adapter.r * len(targets)


def lora_inputs_per_token(shape: ModelShape, adapter: Adapter, act_bytes: int = 2) -> int:
    """Bytes per token of one layer's distinct LoRA inputs (q/k/v share one, gate/up one; o_proj's is kept
    anyway). A compiled layer with the hashed dropout keeps none: on an H200 (call 55a, run e; r16, dropout
    0.05) 8B at 4,096 tokens 18.0 GiB (planned 23.8 without this, 18.3 with), 1B 8.3 (11.4, 8.4)."""
    groups = {lin.input_group: lin.in_features for lin in _layer_targets(shape, adapter)}
    return act_bytes * sum(n for group, n in groups.items() if group != "attn_out")


def _layer_targets(shape: ModelShape, adapter: Adapter) -> list[Any]:
    in_layer = set(shape.layer_linears())
    return [lin for lin in lora_targets(shape, adapter.target_modules) if lin in in_layer]


def compile_saving_per_token(shape: ModelShape, act_bytes: int = 2) -> int:
    """Bytes per token one compiled decoder layer saves fewer than the eager layer: ``a(I + 2h)``.
    Measured on an H200 (2026-11-30, runs i and j, LoRA r16 all-linear, dropout 0.05, no checkpointing):
    the 8B shape at 4,096 tokens 37.2 -> 31.8 GiB (44,237 B/token/layer; this formula 45,056), the 1B shape
    at 8,192 tokens 18.2 -> 15.4 GiB (22,612; formula 24,576)."""
    return act_bytes * (shape.intermediate + 2 * shape.hidden)


def outside_saved_per_token(shape: ModelShape, act_bytes: int = 2) -> int:
    """Bytes saved per token outside the decoder layers: the final norm and RoPE's cos/sin."""
    return 4 * shape.hidden + 4 + 2 * act_bytes * shape.head_dim


def backward_transient_per_token(shape: ModelShape, act_bytes: int = 2) -> int:
    """Gradients alive at once in a layer's backward beyond its saved tensors: about one MLP-wide and one
    hidden-wide buffer. Calibrated on an H200 (2026-11-30): an 8-layer hidden-1024 Llama at 8,192 tokens
    (tests/gpu/test_gpu_planning.py) and the 8B shape at 131,072 tokens (W3: 68.1 GiB measured, 69.0
    planned); the first estimate, three times this, overshot both by 10-20%."""
    return act_bytes * (shape.intermediate + shape.hidden)


def loss_bytes(shape: ModelShape, loss: str, tokens: int, act_bytes: int = 2) -> int:
    """Extra memory at the loss's peak (its backward)."""
    if loss == "standard":
        return 12 * shape.vocab * tokens  # fp32 log-softmax output + fp32 gradient in + out
    chunk = min(tokens, LOSS_CHUNK_TOKENS)
    if loss == "fused" and 4 * shape.vocab * tokens <= PLAIN_HEAD_LOGITS_BYTES:
        chunk = tokens  # few rows: the plain head on all of them (head_loss.fused_causal_lm_loss)
    # one chunk's 16-bit logits, fp32 copy, log-softmax and gradients; the supervised hidden states
    # gathered for the head and their gradient
    return 14 * shape.vocab * chunk + (act_bytes + 4) * shape.hidden * tokens


def estimate_memory(
    shape: ModelShape, quant: Any, adapter: Adapter, settings: Settings, tokens: int, dtype_bytes: int = 2
) -> MemoryEstimate:
    """Peak memory of one micro-step of ``tokens`` tokens (rows x sequence length).

    Args:
        shape: the model.
        quant: the `quant` section (``kind``, ``double_quant`` where it applies).
        adapter: LoRA and optimizer settings.
        settings: checkpointing, offload, loss.
        tokens: tokens in the micro-batch.
        dtype_bytes: bytes per element of the compute dtype.
    """
    a = dtype_bytes
    components = weight_bytes(shape, quant.kind, getattr(quant, "double_quant", False), a)
    adapter_parts, paged = adapter_bytes(shape, adapter, a)
    components.update(adapter_parts)
    if settings.compiles and not adapter.light_in_compiled:  # compiled layers run PEFT's dropout
        adapter = replace(adapter, light_dropout=False)
    layer = layer_saved_per_token(shape, adapter, a)
    if settings.compiles:
        layer -= compile_saving_per_token(shape, a)
    kept = layer  # by a layer not checkpointed; a recomputed layer's peak counts `layer` (not measured)
    if settings.compiles and adapter.light_in_compiled and adapter.light_dropout and adapter.dropout > 0:
        kept -= lora_inputs_per_token(shape, adapter, a)
    stored, host = _stored_per_token(shape, settings, kept, a)
    components["activations kept for backward"] = (stored + outside_saved_per_token(shape, a)) * tokens
    loss_peak = loss_bytes(shape, settings.loss, tokens, a)
    layer_peak = 0
    if settings.grad_checkpointing:  # the recomputed layer, its backward transients, one dequantized weight
        widest = max(lin.numel for lin in shape.layer_linears())
        layer_peak = (
            layer + backward_transient_per_token(shape, a) + 2 * a * shape.hidden
        ) * tokens + widest * a
    phase = "loss backward" if loss_peak >= layer_peak else "layer backward"
    components["working set at the peak"] = max(loss_peak, layer_peak)
    notes = [] if shape.calibrated else [f"{shape.model_type}: activation formula not calibrated for it"]
    return MemoryEstimate(components, phase, paged_bytes=paged, host_bytes=host * tokens, notes=notes)


def _stored_per_token(shape: ModelShape, settings: Settings, layer: int, a: int) -> tuple[int, int]:
    """``(device bytes, host bytes)`` per token kept between forward and backward by the layers."""
    if not settings.grad_checkpointing:
        return shape.layers * layer, 0
    inputs = a * shape.hidden
    k, m = settings.checkpointed(shape.layers), settings.offloaded(shape.layers)
    # offloaded inputs on the device: the one in use and the one prefetched; the others stay there
    in_flight = min(m, 2)
    return (k - m + in_flight) * inputs + (shape.layers - k) * layer, m * inputs


def host_ram() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def pins_too_much(host_bytes: int, ram: int | None) -> bool:
    """Whether offload's ``host_bytes`` of pinned buffers pass :data:`HOST_SHARE` of ``ram`` (unknown: no)."""
    return bool(host_bytes) and ram is not None and host_bytes > HOST_SHARE * ram
