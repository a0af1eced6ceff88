"""``sdpa_varlen``: transformers' SDPA attention, except that packed training passes run torch's flash kernel
for variable-length sequences.

Why: a packed row (several examples in one row, positions restarting at each) is attended by SDPA with a
block-diagonal mask over its whole width, which costs width^2 and rules out the flash kernel; on an H200
W1's packed passes (~2,100 tokens of ~200-token examples) spent 7.4 of a step's 28 ms of device time in the
memory-efficient kernel with that mask (benchmarks/gpu/call40.sh). Flash attention's variable-length kernel
attends each example to itself only, from its cumulative lengths (``cu_seq_lens_q/k``, which the
:class:`~qlora_kit.data.collate.PackedCollator` adds with ``varlen_kwargs``), dropout included.

Everything else is SDPA's: batches without those lengths (padded rows, generation), float32 inputs, CPUs,
sliding windows and soft-capping go to transformers' ``sdpa_attention_forward`` with the mask SDPA would get.
transformers has flash attention's variable-length path too, but only through the ``flash-attn`` package or
kernels from the hub; this uses the kernel torch ships (``aten::_flash_attention_forward``, private API:
:mod:`qlora_kit.compat` style pins below).

A packed pass also carries :func:`packed_mask`, an empty 4-D ``attention_mask`` that stands for "each example
attends to itself": transformers passes a 4-D mask through as it is, so it builds no block-diagonal mask (0.8
ms of a W1 step) and never checks the positions for packing or the ids for padding, each of which made the
host wait for the device. Where such a pass falls back to SDPA, the real mask is built from the lengths.

Shapes stay fixed for CUDA graphs (:mod:`~qlora_kit.training.layer_graphs`): the collator pads the
cumulative lengths with empty sequences to a power of two, and passes the row's width as the longest
length (an upper bound the kernel accepts; blocks past a sequence's end return at once).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

NAME = "sdpa_varlen"
"""The attention implementation's name (``model.attn_implementation``; ``config._attn_implementation``)."""

_HALF = (torch.float16, torch.bfloat16)


def register() -> str:
    """Register :data:`NAME` with transformers (the attention function and SDPA's mask builder); returns
    the name. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def adopt(model: Any, requested: str | None, device: torch.device, compute_dtype: str) -> bool:
    """Switch a loaded ``model`` from SDPA to :data:`NAME` where it pays: ``model.attn_implementation``
    unset (the default) or :data:`NAME`, a CUDA device, a 16-bit compute dtype, and a model transformers
    runs with SDPA. Returns whether it switched (the log says so)."""
    from qlora_kit.compat import attn_implementation

    if requested not in (None, NAME) or device.type != "cuda" or compute_dtype not in ("float16", "bfloat16"):
        return False
    if attn_implementation(model) != "sdpa":
        if requested == NAME:  # asked for by name, and transformers could not give this model SDPA
            logger.warning("model.attn_implementation=%s: this model runs %s attention, not SDPA; kept as is",
                           NAME, attn_implementation(model))  # fmt: skip
        return False
    register()
    model.set_attn_implementation(NAME)
    logger.info("attention: %s (SDPA; packed passes run flash attention's variable-length kernel)", NAME)
    return True


def varlen_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature (``query``/``key``/``value``: batch, heads, length, head
    dim; returns batch, length, heads, head dim). A packed pass (``cu_seq_lens_q`` in ``kwargs``, one row) of
    16-bit CUDA tensors runs the variable-length flash kernel; anything else SDPA."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    dtype = _kernel_dtype(query)
    if cu_q is None or cu_k is None or not _varlen_ready(module, query, key, dtype, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if is_packed_mask(attention_mask):
            window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
            causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
            attention_mask = block_mask(cu_q, query.shape[2], causal, window)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # (tokens, heads, head dim)
    out = _VarlenFlash.apply(
        q, k, v, cu_q, cu_k, int(kwargs.get("max_length_q") or q.shape[0]),
        int(kwargs.get("max_length_k") or k.shape[0]), float(dropout), scaling, causal,
    )  # fmt: skip
    return out[None], None


def packed_mask() -> torch.Tensor:
    """The ``attention_mask`` of a packed pass with cumulative lengths: empty, 4-D (see the module's doc)."""
    return torch.ones((1, 1, 0, 0), dtype=torch.bool)


def is_packed_mask(mask: Any) -> bool:
    """Whether ``mask`` is :func:`packed_mask`'s."""
    return isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[-1] == 0


def block_mask(
    cu_lengths: torch.Tensor, length: int, causal: bool = True, window: int | None = None
) -> torch.Tensor:
    """The boolean ``[1, 1, length, length]`` mask SDPA needs for a packed row of these cumulative lengths
    (padded at the end with the total, as :func:`cumulative_lengths` does): each position attends within its
    own example, causally, and within ``window`` positions of itself if given. Built on the lengths'
    device without reading them on the host."""
    positions = torch.arange(length, device=cu_lengths.device)
    example = torch.searchsorted(cu_lengths[1:].contiguous(), positions, right=True)
    mask = example[:, None] == example[None, :]
    offset = positions[:, None] - positions[None, :]  # query minus key
    if causal:
        mask &= offset >= 0
    if window is not None:
        mask &= offset < window
    return mask[None, None]


def _kernel_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype SDPA would compute in: float32 inputs under CUDA autocast are cast to its 16-bit dtype (GPT-2's
    float32 residual stream gives float32 queries, which autocast hands to SDPA in bf16)."""
    if query.dtype == torch.float32 and query.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return query.dtype


def _varlen_ready(
    module: Any, query: torch.Tensor, key: torch.Tensor, dtype: torch.dtype, kwargs: dict[str, Any]
) -> bool:
    """Whether the flash kernel can take this call: one packed CUDA row computed in 16 bits (``dtype``),
    plain attention."""
    plain = (
        kwargs.get("sliding_window") is None
        and getattr(module, "sliding_window", None) is None
        and kwargs.get("softcap") is None
        and kwargs.get("s_aux") is None
    )
    return (
        plain
        and query.is_cuda
        and query.shape[0] == 1
        and dtype in _HALF
        and key.dtype == query.dtype
        and query.shape[-1] <= 256
        and query.shape[-1] % 8 == 0
    )


class _VarlenFlash(torch.autograd.Function):
    """``aten::_flash_attention_forward`` / ``_backward`` on (tokens, heads, head dim) tensors (torch
    2.11-2.13 schemas; the backward replays the forward's dropout from the ``rng_state`` it returned)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_q: torch.Tensor,
        cu_k: torch.Tensor,
        max_q: int,
        max_k: int,
        dropout_p: float,
        scale: float | None,
        causal: bool,
    ) -> torch.Tensor:
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, causal, False, scale=scale
        )
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, rng_state, unused)
        ctx.args = (max_q, max_k, dropout_p, causal, scale)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, out, lse, cu_q, cu_k, rng_state, unused = ctx.saved_tensors
        max_q, max_k, dropout_p, causal, scale = ctx.args
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, causal,
            rng_state, unused, scale=scale,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None, None, None, None


def cumulative_lengths(lengths: list[int], slots_at_least: int = 16) -> torch.Tensor:
    """int32 cumulative ``lengths`` from 0, padded with empty sequences (the total repeated) to a power of
    two entries, at least ``slots_at_least``: passes of one width then share a shape, whatever their number
    of examples."""
    slots = max(slots_at_least, 1 << len(lengths).bit_length())  # > len(lengths): room for the leading 0
    cu = torch.zeros(slots, dtype=torch.int32)
    cu[1 : len(lengths) + 1] = torch.tensor(lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu[len(lengths) + 1 :] = cu[len(lengths)]
    return cu
