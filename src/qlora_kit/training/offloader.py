"""The offloading engine: saved-tensor hooks that move one chosen tensor to (pinned) host memory in the
forward pass and bring it back in the backward pass, prefetching the next one; see
:mod:`qlora_kit.training.offload` for how it is installed on checkpointed layers and why it is exact.

CUDA tensors are copied on a side stream:

- forward: the side stream waits for the compute stream (the input must exist), then copies the input
  into pinned chunks; ``record_stream`` keeps the caching allocator from reusing the input's memory
  before that copy has run, so the compute stream is never blocked and the GPU copy is freed as soon
  as it can be.
- backward: when a layer's recompute asks for its input, the input of the layer before it (the next
  one the backward pass needs) is prefetched on the side stream while this layer recomputes and
  back-propagates (double buffering); the compute stream waits only on the event of the copy it needs.

CPU tensors are copied into separate CPU tensors (no streams), so the logic is testable without a GPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

MIN_OFFLOAD_BYTES = 1 << 20
"""Inputs smaller than this stay on the device (a copy would cost more than the memory it frees)."""
CHUNK_BYTES = 1 << 26
"""Host buffers are 64 MiB chunks: torch's pinned-memory cache rounds every allocation up to a power of
two, so one 3 GiB buffer would take 4 GiB of pinned memory; equal chunks waste at most one chunk."""


class _Offloaded:
    """One offloaded tensor: its host chunks and, once brought back, its device copy."""

    __slots__ = ("__weakref__", "chunks", "device", "dtype", "event", "loaded", "nbytes", "shape", "split")

    def __init__(self, x: torch.Tensor, split: int):
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.nbytes = x.numel() * x.element_size()
        self.split = split  # elements per chunk
        self.chunks: list[torch.Tensor] = []
        self.loaded: torch.Tensor | None = None
        self.event: Any = None


class ActivationOffloader:
    """Moves chosen saved tensors to host memory in the forward pass and back in the backward pass.

    Use :meth:`saving` around a ``torch.utils.checkpoint`` call (this is what :class:`OffloadedCheckpoint`
    does); only the tensor given as ``target`` is offloaded, everything else is saved as usual.

    Args:
        min_bytes: smaller targets stay where they are.
        chunk_bytes: size of the host buffers a tensor is split into.
    """

    def __init__(self, *, min_bytes: int = MIN_OFFLOAD_BYTES, chunk_bytes: int = CHUNK_BYTES):
        self.min_bytes = min_bytes
        self.chunk_bytes = chunk_bytes
        self.offloaded = 0
        """Tensors offloaded so far."""
        self.offloaded_bytes = 0
        """Bytes offloaded so far."""
        self._target: torch.Tensor | None = None
        self._target_packed = False
        self._pending: list[weakref.ref[_Offloaded]] = []  # packed, not yet brought back, pack order
        self._streams: dict[torch.device, Any] = {}

    def pending_bytes(self) -> int:
        """Bytes now held on the host for a backward pass that has not asked for them yet."""
        return sum(h.nbytes for h in self._alive())

    @contextmanager
    def saving(self, target: torch.Tensor | None) -> Iterator[ActivationOffloader]:
        """Saved-tensor hooks that offload ``target`` when autograd saves it; yields self.

        After the block, :attr:`target_packed` says whether autograd did save (and so offload) it.
        """
        self._target, self._target_packed = target, False
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield self
        finally:
            self._target = None

    @property
    def target_packed(self) -> bool:
        """Whether the last :meth:`saving` block offloaded its target."""
        return self._target_packed

    # ------------------------------------------------------------------------------------ pack

    def _pack(self, x: torch.Tensor) -> Any:
        if not self._is_target(x):
            return x
        self._target_packed = True
        handle = _Offloaded(x, max(1, self.chunk_bytes // x.element_size()))
        pieces = x.detach().reshape(-1).split(handle.split)
        if x.device.type == "cuda":
            stream = self._side_stream(x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))  # x must be computed first
            with torch.cuda.stream(stream):
                handle.chunks = [_pinned_like(p).copy_(p, non_blocking=True) for p in pieces]
            x.record_stream(stream)  # its memory is handed out again only after the copy has run
        else:
            handle.chunks = [p.clone() for p in pieces]
        self._pending = [r for r in self._pending if r() is not None]
        self._pending.append(weakref.ref(handle))
        self.offloaded += 1
        self.offloaded_bytes += handle.nbytes
        return handle

    def _is_target(self, x: torch.Tensor) -> bool:
        t = self._target
        if t is None or not worth_offloading(x, self.min_bytes):
            return False
        same = x.data_ptr() == t.data_ptr() and x.shape == t.shape and x.dtype == t.dtype
        return same and x.device == t.device

    # ---------------------------------------------------------------------------------- unpack

    def _unpack(self, handle: Any) -> torch.Tensor:
        if isinstance(handle, torch.Tensor):
            return handle
        self._pending = [r for r in self._pending if r() not in (None, handle)]
        if handle.loaded is None:  # not prefetched (the first layer of a backward pass, or a re-use)
            self._load(handle)
        x, handle.loaded = handle.loaded, None
        if handle.event is not None:
            torch.cuda.current_stream(handle.device).wait_event(handle.event)
        following = self._alive()
        if following and following[-1].loaded is None:
            self._load(following[-1])  # the input the backward pass needs next: copy it during this layer
        return x

    def _load(self, handle: _Offloaded) -> None:
        if handle.device.type != "cuda":
            handle.loaded = torch.cat(handle.chunks).view(handle.shape)
            return
        compute = torch.cuda.current_stream(handle.device)
        out = torch.empty(handle.shape, dtype=handle.dtype, device=handle.device)
        stream = self._side_stream(handle.device)
        stream.wait_stream(compute)  # `out`'s block may still be read by compute work queued earlier
        with torch.cuda.stream(stream):
            for piece, chunk in zip(out.view(-1).split(handle.split), handle.chunks, strict=True):
                piece.copy_(chunk, non_blocking=True)
            handle.event = stream.record_event()
        out.record_stream(stream)
        handle.loaded = out

    # -------------------------------------------------------------------------------- internals

    def _alive(self) -> list[_Offloaded]:
        return [h for h in (r() for r in self._pending) if h is not None]

    def _side_stream(self, device: torch.device) -> Any:
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]


def worth_offloading(x: torch.Tensor, min_bytes: int) -> bool:
    """Whether offloading ``x`` frees device memory worth a copy."""
    # A leaf that requires grad is held by autograd's AccumulateGrad node: copying it frees nothing.
    if x.requires_grad and x.grad_fn is None:
        return False
    return x.is_contiguous() and x.numel() * x.element_size() >= min_bytes


def _pinned_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
