"""`train.cuda_graphs`: every decoder layer's forward and backward recorded as CUDA graphs, per pass shape.

A small model's GPU step is bound by the host, not the device: each LoRA layer runs a dozen small ops
(4-bit dequantisation, matmuls, dropout, scaling, adds), each a Python call and a kernel launch, and a
135M-parameter Llama's step of 8 x 32 tokens took 0.27 s on an H200 for about 5,700 launches
(benchmarks/gpu/call28a.sh). A CUDA graph replays a recorded sequence of kernels with one launch.
:func:`torch.cuda.make_graphed_callables` records a module's forward and backward as two graphs inside one
autograd node, from the eager code as it is: no compilation, so no compile time in the first steps.

How :class:`LayerGraphs` uses it:

* **Per pass shape.** A recording is valid for the shapes, dtypes and gradient flags of a layer's tensor
  inputs and the values of its other arguments (its *signature*). The first training pass of a new
  signature (that of the first layer not checkpointed) runs eagerly, which shows what each layer gets
  (a layer may change the hidden states' dtype: GPT-2's first one turns bf16 embeddings into float32);
  at its next pass that starts a step every layer not checkpointed is recorded at once, in one memory
  pool shared by all recordings: passes run one at a time, forwards in layer order and backwards in
  reverse, the order they were recorded in, so recordings can reuse each other's memory. Later passes of
  that signature replay the graphs; inputs are copied into the graphs' own tensors first. Batches of few
  shapes (packed passes filled to quarters of a token budget: ``data.collate.bucketed_widths``;
  ``data.padding: max_length``; ``data.pad_to_multiple_of``) record few times; at most
  :data:`MAX_SIGNATURES` are recorded, and passes of further shapes run eagerly.
* **Eager where it cannot record.** Evaluation and generation (no gradients), checkpointed layers (their
  recompute happens outside the recorded backward) and arguments that are neither tensors nor plain
  values run eagerly. So do signatures whose recording failed (e.g. transformers' flash-attn path, which reads
  lengths on the host; ``sdpa_varlen`` takes them as plain ints and records): a warning names the error once.
* **Gradients.** The backward graph returns gradients in its own memory, which the next replay
  overwrites: in a step of several passes each trainable parameter's gradient is copied out before it is
  accumulated (:func:`~qlora_kit.training.compiling.copy_gradients_out`), so accumulation is exact.
* **Randomness.** Dropout draws from the CUDA generator, whose offset every replay advances, so masks
  differ from pass to pass as in eager mode. The light LoRA dropout (:mod:`qlora_kit.model.lora_dropout`)
  takes its seed on the host, which a graph would freeze: while recording it runs PEFT's form instead.
* **Autocast** runs without its cast cache while recording (make_graphed_callables requires it); the
  cache only saves re-casting a weight used twice in one forward pass.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from qlora_kit.training.compiling import GradientCopies

logger = logging.getLogger(__name__)

MAX_SIGNATURES = 16
"""Pass shapes recorded at most; passes of further shapes run eagerly (each recording keeps its inputs,
outputs and gradient buffers for every layer)."""

MIN_RECORDED_PASSES = 12
"""A packed pass width the run is known to meet fewer times than this runs eagerly (:func:`recurring_widths`):
a recording cost W1 on an H200 about 0.2 s, some ten steps' time, where a replay saves ~20 ms over an eager
pass (run 2026-12-01h). W1 has 2 passes of its narrowest width in 258 steps."""

WARMUP_PASSES = 1
"""Eager forward + backward passes on the sample inputs before a recording (lazy initialisation, e.g.
cuBLAS workspaces, must not happen inside a graph). One is enough: a shape is recorded at its second pass,
after a whole eager pass of that shape (the GPU tests check the losses against eager runs)."""


@dataclass(frozen=True)
class LayerCall:
    """One call of a decoder layer, split into its tensors and the rest (:func:`split_call`)."""

    tensors: tuple[torch.Tensor, ...]
    rebuild: Callable[[Sequence[torch.Tensor]], tuple[tuple[Any, ...], dict[str, Any]]]
    signature: Hashable


def split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall | None:
    """``args`` and ``kwargs`` as tensors, a function that puts tensors back in their places, and the
    call's signature; None when an argument is neither a tensor nor a plain hashable value (a cache)."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    others = tuple((i, leaf) for i, leaf in enumerate(leaves) if not isinstance(leaf, torch.Tensor))
    if not all(isinstance(value, (type(None), bool, int, float, str)) for _, value in others):
        return None
    tensors = tuple(leaves[i] for i in slots)

    def rebuild(new: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        filled = list(leaves)
        for i, tensor in zip(slots, new, strict=True):
            filled[i] = tensor
        return pytree.tree_unflatten(filled, spec)

    shapes = tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in tensors)
    return LayerCall(tensors, rebuild, (str(spec), others, shapes))


Entry = tuple[Hashable, Callable[..., Any]]
"""A recorded layer: the signature it was recorded for, and its graphed forward."""


class _Surface(nn.Module):
    """A layer as a module of tensors only, what make_graphed_callables records: its parameters are the
    layer's (so they get gradients), its forward the layer's own (below any wrapper of ``forward``)."""

    def __init__(self, layer: nn.Module, forward: Callable[..., Any], call: LayerCall):
        super().__init__()
        self.layer = layer
        self._forward, self._rebuild = forward, call.rebuild

    def forward(self, *tensors: torch.Tensor) -> Any:
        args, kwargs = self._rebuild(tensors)
        return self._forward(*args, **kwargs)


class LayerGraphs:
    """Records and replays ``layers`` (a model's decoder layers, in call order) as CUDA graphs; see the
    module docstring. Installs itself as each layer's ``forward``; :meth:`remove` restores them."""

    def __init__(self, layers: Sequence[nn.Module], max_signatures: int = MAX_SIGNATURES):
        self.layers = list(layers)
        self.originals = [layer.forward for layer in self.layers]
        self._own_forward = ["forward" in vars(layer) for layer in self.layers]
        self.max_signatures = max_signatures
        self.recordings: dict[Hashable, list[Entry | None]] = {}
        self.failed: set[Hashable] = set()
        self.current: list[Entry | None] | None = None
        self.replays = 0
        self.mismatches = 0
        """Layer calls run eagerly because their inputs differ from the recording of their pass."""
        self._seen: set[Hashable] = set()  # pass signatures run once (eagerly): recorded at their next pass
        self.worth_recording: Callable[[torch.Tensor], bool] | None = None
        """From a pass's hidden states, whether recording its shape pays (None: every shape does)."""
        self._inputs: dict[int, tuple[torch.dtype, bool]] = {}  # per layer: its hidden input, last eager pass
        self._pool: Any = None
        for index, layer in enumerate(self.layers):
            layer.forward = functools.partial(self._forward, index)

    def remove(self) -> None:
        """Give every layer its own forward back (the recordings are dropped)."""
        for layer, original, own in zip(self.layers, self.originals, self._own_forward, strict=True):
            if own:  # the layer had a forward of its own (another wrapper): put it back
                layer.forward = original
            else:
                del layer.forward  # the class's forward again
        self.recordings.clear()
        self.current = None

    def _forward(self, index: int, *args: Any, **kwargs: Any) -> Any:
        layer, original = self.layers[index], self.originals[index]
        eager = not (layer.training and torch.is_grad_enabled()) or checkpointed_layer(layer)
        call = None if eager else split_call(args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        first = index == self._first_recordable()
        if first:
            self.current = self._recording_for(call, index)
        if self.current is None:  # an eager pass: what each layer gets is what its recording will get
            self._inputs[index] = (call.tensors[0].dtype, call.tensors[0].requires_grad)
        entry = self.current[index] if self.current is not None else None
        if entry is None or entry[0] != call.signature:
            if entry is not None:  # e.g. a layer whose inputs differ from the first layer's
                self._mismatch(index, entry[0], call.signature)
            return original(*args, **kwargs)
        self.replays += first
        return entry[1](*call.tensors)

    def _accumulating(self) -> bool:
        """Whether a trainable parameter holds a gradient (a later pass of a step). A capture at a step's
        second pass failed on the H200 (call 38: "AccumulateGrad node's stream does not match",
        cudaErrorStreamCaptureInvalidated); recording waits for a first pass, beside
        :func:`_no_gradient_copies`: with both, the two-passes-per-step GPU test passes (call 40; which of the two
        was needed is not separated)."""
        return any(p.grad is not None for layer in self.layers for p in layer.parameters() if p.requires_grad)

    def _mismatch(self, index: int, recorded: Hashable, got: Hashable) -> None:
        """Count a layer call that runs eagerly because its inputs differ from its recording; say so once."""
        self.mismatches += 1
        if self.mismatches == 1:
            # signatures are (structure, plain values, tensor shapes): name the first part that differs
            part = next(i for i, (a, b) in enumerate(zip(recorded, got, strict=True)) if a != b)  # type: ignore[call-overload]
            logger.warning("cuda_graphs: layer %d's inputs differ from its recording, so it runs eagerly "
                           "(%s: recorded %s, called with %s)", index, ("structure", "values", "tensors")[part],
                           recorded[part], got[part])  # type: ignore[index]  # fmt: skip

    def _first_recordable(self) -> int:
        """The first layer that is not checkpointed (-1: none): its call chooses the pass's recording."""
        return next((i for i, layer in enumerate(self.layers) if not checkpointed_layer(layer)), -1)

    def _recording_for(self, call: LayerCall, start: int) -> list[Entry | None] | None:
        """The recording for ``call``, the first recordable layer's (``start``), made now if it is new (and
        allowed)."""
        key = (start, call.signature)
        found = self.recordings.get(key)
        if found is not None or key in self.failed:
            return found
        if len(self.recordings) >= self.max_signatures:
            return None
        if self.worth_recording is not None and not self.worth_recording(call.tensors[0]):
            self.failed.add(key)  # not failed: never recorded, which is all the set means
            logger.info("cuda_graphs: a pass shape too rare in this run to record runs eagerly (%s)",
                        tuple(call.tensors[0].shape))  # fmt: skip
            return None
        if key not in self._seen:  # its first pass runs eagerly, so that each layer's input is known
            self._seen.add(key)
            return None
        if self._accumulating():
            return None  # wait for a step's first pass
        try:
            found = self._record(call, start)
        except Exception as error:  # noqa: BLE001 - any failure to record means: run this shape eagerly
            self.failed.add(key)
            logger.warning("cuda_graphs: recording a pass shape failed, it runs eagerly (%s: %s)",
                           type(error).__name__, error)  # fmt: skip
            return None
        self.recordings[key] = found
        logger.info("cuda_graphs: recorded %d layers for a new pass shape (%d so far)",
                    sum(e is not None for e in found), len(self.recordings))  # fmt: skip
        return found

    def _record(self, call: LayerCall, start: int) -> list[Entry | None]:
        """Record the layers from ``start`` on that are not checkpointed, for ``call``'s signature; each
        with its hidden states (the first tensor) in the dtype and gradient flag seen at the eager pass
        before (GPT-2's first layer takes bf16 embeddings and returns float32 hidden states)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        shared = tuple(t.detach().clone() for t in call.tensors[1:])  # masks, positions: read-only
        hidden = call.tensors[0].detach()
        needs_grad = call.tensors[0].requires_grad
        indices, surfaces, samples, signatures = [], [], [], []
        for index in range(start, len(self.layers)):
            layer = self.layers[index]
            if not checkpointed_layer(layer):
                dtype, grad = self._inputs.get(index, (hidden.dtype, needs_grad))
                sample = (hidden.to(dtype).clone().requires_grad_(grad), *shared)
                layer_call = split_call(*call.rebuild(sample))
                assert layer_call is not None  # the same structure as ``call``
                indices.append(index)
                surfaces.append(_Surface(layer, self.originals[index], layer_call))
                samples.append(sample)
                signatures.append(layer_call.signature)
            needs_grad = needs_grad or any(p.requires_grad for p in layer.parameters())
        with _recording_autocast(hidden.device.type), _no_gradient_copies():
            graphed = torch.cuda.make_graphed_callables(
                tuple(surfaces), tuple(samples), num_warmup_iters=WARMUP_PASSES, allow_unused_input=True,
                pool=self._pool,
            )  # fmt: skip
        entries: list[Entry | None] = [None] * len(self.layers)
        for index, signature, function in zip(indices, signatures, graphed, strict=True):
            entries[index] = (signature, function)
        return entries


def recurring_widths(counts: Mapping[int, int]) -> Callable[[torch.Tensor], bool]:
    """A :attr:`LayerGraphs.worth_recording` from the run's packed pass widths and their number of passes
    (``counts``): a one-row pass of a width met fewer than :data:`MIN_RECORDED_PASSES` times is not worth a
    recording; other passes (several rows, widths not counted) are."""

    def worth(hidden: torch.Tensor) -> bool:
        if hidden.ndim < 2 or hidden.shape[0] != 1:
            return True
        return counts.get(hidden.shape[1], MIN_RECORDED_PASSES) >= MIN_RECORDED_PASSES

    return worth


@contextmanager
def _no_gradient_copies() -> Iterator[None]:
    """The gradient-copy hooks as no-ops while recording: the recording's gradients are returned, never
    accumulated, and a copy made by a parameter's hook would run on its AccumulateGrad node's stream, not the
    capture's (after an eager backward the H200 run invalidated such a capture: call 38)."""
    before = GradientCopies.several_passes
    GradientCopies.several_passes = False
    try:
        yield
    finally:
        GradientCopies.several_passes = before


def checkpointed_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` recomputes its forward in the backward pass (transformers' per-layer flag)."""
    return bool(getattr(layer, "gradient_checkpointing", False))


def _recording_autocast(device_type: str) -> Any:
    """The current autocast state without its cast cache (which make_graphed_callables refuses)."""
    enabled = torch.is_autocast_enabled(device_type)
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), enabled=enabled,
                          cache_enabled=False)  # fmt: skip
