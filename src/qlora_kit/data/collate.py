"""Collators: turn encoded rows ``{"input_ids": [...], "labels": [...]}`` into model batches.

Labels are aligned with ``input_ids`` (the loss shifts them); masked positions hold -100.

Packing and attention implementations (transformers 5, read in ``masking_utils`` and
``modeling_flash_attention_utils``): with ``attention_mask=None``, ``create_causal_mask`` finds the
examples of a packed row from ``position_ids`` (``find_packed_sequence_indices``: a new example starts
wherever the position does not grow by 1) and blocks attention across them for ``sdpa``, ``eager`` and
``flex_attention``; flash attention 2/3/4 do the same with variable-length kernels, from ``position_ids``
or from the ``cu_seq_lens_q/k`` and ``max_length_q/k`` this collator adds for them. The detection only
runs when the forward has no cache, so the model must be called with ``use_cache=False`` (transformers
forces that under gradient checkpointing in training, but not otherwise).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from qlora_kit.formatting.tokens import IGNORE_INDEX, pad_token_id
from qlora_kit.model.varlen_attention import NAME as VARLEN
from qlora_kit.model.varlen_attention import cumulative_lengths, packed_mask

PACKING_ATTENTION = (
    "sdpa",
    "sdpa_varlen",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
)
"""Attention implementations that keep packed examples apart (None, the transformers default, is sdpa)."""

__all__ = [
    "IGNORE_INDEX",
    "PACKING_ATTENTION",
    "AutoPackCollator",
    "PackedCollator",
    "PaddedCollator",
    "make_collator",
]


@dataclass
class PaddedCollator:
    """Right-pads a micro-batch to its longest row rounded up to ``pad_to_multiple_of``, or to
    ``max_length`` when given (the reference recipe's `padding: max_length`). Padding is never a label."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8
    max_length: int | None = None

    def tokens(self, lengths: Sequence[int]) -> int:
        """Positions a batch of rows of these ``lengths`` computes (padding included)."""
        return len(lengths) * self._width(max(lengths))

    def _width(self, longest: int) -> int:
        if self.max_length is not None:
            return max(self.max_length, longest)
        if self.pad_to_multiple_of:
            return -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return longest

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = self._width(longest)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class PackedCollator:
    """Concatenates a micro-batch's examples into one row (batch dimension 1), without padding.

    Returns ``input_ids``, ``labels`` and ``position_ids`` restarting at 0 for each example, and no
    ``attention_mask`` (its absence is what lets transformers isolate the examples). The first token
    of each example is never a label: it would otherwise be predicted from the previous example.
    With ``flash_kwargs`` it also returns ``cu_seq_lens_q/k`` (int32 cumulative lengths) and
    ``max_length_q/k`` (0-d int32 tensors), which flash attention uses directly instead of deriving them from the
    positions in every layer. With ``varlen_kwargs`` instead (for :mod:`qlora_kit.model.varlen_attention`),
    the cumulative lengths are padded with empty sequences to a power of two and ``max_length_q/k`` are the
    row's width as plain ints: every pass of one width has one signature for ``train.cuda_graphs``, and the
    attention reads no length from the device; and ``attention_mask`` is
    :func:`~qlora_kit.model.varlen_attention.packed_mask` (no block-diagonal mask built, no device sync).
    """

    flash_kwargs: bool = False
    varlen_kwargs: bool = False
    pad_to_multiple_of: int | None = None
    """Round the row's length up to a multiple of this with filler examples of ``pad_token_id``, never a
    label, none longer than the longest row (fewer distinct shapes for ``train.cuda_graphs``)."""
    pad_token_id: int = 0
    widths: tuple[int, ...] = ()
    """Fill a row up to the smallest of these lengths it fits, the same way (few shapes for all passes:
    :func:`bucketed_widths`); longer rows are rounded by ``pad_to_multiple_of``."""

    def tokens(self, lengths: Sequence[int]) -> int:
        """Positions a packed batch of rows of these ``lengths`` computes: their sum, rounded up."""
        return sum(lengths) + self._filler(lengths)

    def _filler(self, lengths: Sequence[int]) -> int:
        total = sum(lengths)
        width = min((w for w in self.widths if total <= w), default=None)
        if width is not None:
            return width - total
        return -total % (self.pad_to_multiple_of or 1)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        filler = self._filler([len(r["input_ids"]) for r in rows])
        if filler:  # examples of their own: positions restart, so nothing attends across them
            # no longer than the longest row, so their positions stay within the model's (GPT-2's learned
            # position embeddings stop at 1,024: a 3,000-token filler would index past them)
            piece = max(len(r["input_ids"]) for r in rows)
            rows = [*rows, *({"input_ids": [self.pad_token_id] * n, "labels": [IGNORE_INDEX] * n}
                             for n in [min(piece, filler - start) for start in range(0, filler, piece)])]  # fmt: skip
        lengths = [len(r["input_ids"]) for r in rows]
        input_ids = torch.cat([torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows])
        labels = torch.cat([torch.as_tensor(r["labels"], dtype=torch.long) for r in rows])
        position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        labels[starts] = IGNORE_INDEX
        batch: dict[str, Any] = {
            "input_ids": input_ids[None],
            "labels": labels[None],
            "position_ids": position_ids[None],
        }
        if self.flash_kwargs:
            cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            # A 0-d tensor, as transformers' own prepare_fa_kwargs_from_position_ids gives, so that every
            # value of the batch moves to the device with `.to()`.
            longest = torch.tensor(max(lengths), dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        elif self.varlen_kwargs:
            cu = cumulative_lengths(lengths)
            width = sum(lengths)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=width, max_length_k=width,
                         attention_mask=packed_mask())  # fmt: skip
        return batch


@dataclass
class AutoPackCollator:
    """Packs a batch when that removes enough padding, pads it otherwise (``data.packing: auto``).

    Why not always pack: with SDPA or eager attention a packed row is attended with a block-diagonal mask
    over its whole length, which costs (sum of lengths)^2 and rules out the unmasked flash kernel; rows of
    equal length (nothing to unpad) then run slower packed than padded. Flash attention's variable-length
    kernels have no such cost: with ``flash_attention_*`` every batch of several rows is packed, with
    ``sdpa_varlen`` every batch that has padding to remove (rows of one length stay a plain batch for SDPA,
    which then needs no mask: e.g. cuDNN's kernel for long rows).
    """

    padded: PaddedCollator
    packed: PackedCollator
    min_saving: float = 0.2
    """Pack only when it computes at most ``1 - min_saving`` of the padded batch's positions."""

    def packs(self, lengths: Sequence[int]) -> bool:
        """Whether a batch of rows of these ``lengths`` is packed."""
        if len(lengths) < 2:
            return False
        if self.packed.flash_kwargs:
            return True
        if self.packed.varlen_kwargs:  # no mask to pay for, but rows without padding keep SDPA's own kernels
            return sum(lengths) < self.padded.tokens(lengths)
        return self.packed.tokens(lengths) <= (1 - self.min_saving) * self.padded.tokens(lengths)

    def tokens(self, lengths: Sequence[int]) -> int:
        """Positions the batch computes, packed or padded as :meth:`packs` decides."""
        return (self.packed if self.packs(lengths) else self.padded).tokens(lengths)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = self.packed if self.packs([len(r["input_ids"]) for r in rows]) else self.padded
        return chosen(rows)


WIDTH_BUCKETS = 4
"""Pass widths :func:`bucketed_widths` uses: quarters of the token budget."""


def bucketed_widths(collate_fn: Any, budget: int, n: int = WIDTH_BUCKETS) -> Any:
    """``collate_fn`` with every pass packed into one row filled up to the nearest of ``n`` widths (the
    quarters of ``budget``, rounded up to 64) where it packs (a :class:`PackedCollator`, or the packed side
    of an :class:`AutoPackCollator`): few pass shapes for ``train.cuda_graphs``, which records each shape
    once. Other collators are returned unchanged.

    Why quarters, not the budget alone: a packed row is attended with a block-diagonal mask over its whole
    width, so filling W1's ~2,100-token passes to its 3,604-token budget tripled the attention's time on an
    H200 (16 of a step's 27 ms on the device); the layers' matmuls cost little at these sizes."""
    packed = collate_fn.packed if isinstance(collate_fn, AutoPackCollator) else collate_fn
    if not isinstance(packed, PackedCollator):
        return collate_fn
    widths = tuple(sorted({min(budget, -(-budget * k // n // 64) * 64) for k in range(1, n + 1)}))
    return replace(packed, widths=widths)


def make_collator(data_cfg: Any, tokenizer: Any, *, attn_implementation: str | None = None) -> Any:
    """The collator ``data_cfg`` asks for.

    Args:
        data_cfg: A :class:`~qlora_kit.config.DataConfig` (``packing``, ``padding``, ``max_length``).
        tokenizer: Supplies the pad id (EOS, then 0, when it has none: padded positions are neither
            attended nor labels, so their id does not matter).
        attn_implementation: The model's ``config._attn_implementation``. Packing with one that
            cannot keep examples apart falls back to padding, with a warning.
    """
    supported = attn_implementation is None or attn_implementation in PACKING_ATTENTION
    pad_id = pad_token_id(tokenizer)
    multiple = data_cfg.pad_to_multiple_of
    packed = PackedCollator(flash_kwargs=str(attn_implementation).startswith("flash_attention"),
                            varlen_kwargs=attn_implementation == VARLEN, pad_to_multiple_of=multiple,
                            pad_token_id=pad_id)  # fmt: skip
    padded_multiple = multiple or 8
    if data_cfg.packing == "auto" and data_cfg.padding == "longest" and supported:
        return AutoPackCollator(PaddedCollator(pad_id, pad_to_multiple_of=padded_multiple), packed)
    if data_cfg.packing is True:
        if supported:
            return packed
        warnings.warn(
            f"data.packing: attention implementation {attn_implementation!r} cannot keep packed examples "
            f"apart (supported: {', '.join(PACKING_ATTENTION)}); padding each batch instead",
            stacklevel=2,
        )
    max_length = data_cfg.max_length if data_cfg.padding == "max_length" else None
    return PaddedCollator(pad_token_id=pad_id, pad_to_multiple_of=padded_multiple, max_length=max_length)
