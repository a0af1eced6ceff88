"""Activation offloading: the inputs of checkpointed decoder layers wait in CPU memory, not on the GPU.

With gradient checkpointing, what a decoder layer keeps between forward and backward is its input
(``tokens x hidden`` in the compute dtype; 3 GiB per layer at 393k tokens of an 8B Llama).
:func:`enable_offloaded_checkpointing` installs, on every checkpointed layer, a checkpoint function
that moves that input to pinned host memory during the forward pass and brings it back for the
recompute, overlapped with compute on a side CUDA stream (:mod:`qlora_kit.training.offloader`).

Numerics are those of ``torch.utils.checkpoint`` (non-reentrant) unchanged: the offloading checkpoint
function is that function run under saved-tensor hooks. Why that suffices (checked on torch 2.13 with a
tiny Llama + LoRA; ``tests/unit/test_offload.py`` asserts it): non-reentrant checkpoint saves the
layer's positional inputs as saved tensors *before* it installs its own hooks, so hooks around the
call see exactly the inputs (one tensor per layer) and nothing inside the layer; the keyword arguments
(position embeddings, masks) stay in the checkpoint's closure, shared by every layer, and are not
offloaded. RNG state for the recompute (LoRA dropout masks) is preserved by torch as usual.

One input stays on the device anyway: when ``enable_input_require_grads`` (which transformers' own
``activation_checkpointing_enable`` calls) makes the frozen embeddings' output a leaf that requires
grad, autograd's AccumulateGrad node holds that leaf, so the first layer's input cannot be freed (it is
left where it is, not copied). Non-reentrant checkpointing does not need that hook;
``disable_input_require_grads()`` lets the first layer's input go too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qlora_kit.compat import decoder_layers
from qlora_kit.training.offloader import (
    CHUNK_BYTES,
    MIN_OFFLOAD_BYTES,
    ActivationOffloader,
    worth_offloading,
)

logger = logging.getLogger(__name__)


class OffloadedCheckpoint:
    """A checkpoint function (what transformers calls ``_gradient_checkpointing_func``) that runs
    ``inner`` (non-reentrant ``torch.utils.checkpoint``) with the layer's input offloaded.

    transformers calls it as ``func(partial(layer.forward, **kwargs), hidden_states)``; the first
    positional tensor is the one offloaded.
    """

    def __init__(self, inner: Callable[..., Any], offloader: ActivationOffloader):
        self.inner = inner
        self.offloader = offloader
        self._warned = False

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        target = args[0] if args and isinstance(args[0], torch.Tensor) else None
        with self.offloader.saving(target) as saving:
            out = self.inner(function, *args, **kwargs)
        if self._should_have_packed(target) and not saving.target_packed and not self._warned:
            self._warned = True
            logger.warning(
                "activation offload: torch %s did not save the checkpointed layer's input through "
                "saved-tensor hooks, so nothing is offloaded (written against torch 2.11-2.13)",
                torch.__version__,
            )
        return out

    def _should_have_packed(self, target: torch.Tensor | None) -> bool:
        if target is None or not torch.is_grad_enabled():
            return False
        return worth_offloading(target, self.offloader.min_bytes)


@dataclass
class OffloadHandle:
    """What :func:`enable_offloaded_checkpointing` changed, so that :meth:`remove` can undo it."""

    model: nn.Module
    offloader: ActivationOffloader
    originals: dict[nn.Module, Callable[..., Any]] = field(default_factory=dict)
    enabled_checkpointing: bool = False

    def remove(self) -> None:
        """Put every layer's original checkpoint function back (and checkpointing off if we turned it on)."""
        for layer, func in self.originals.items():
            _set_checkpoint_func(layer, func)
        self.originals.clear()
        if self.enabled_checkpointing:
            _set_checkpointing(self.model, False)
        if getattr(self.model, _HANDLE_ATTR, None) is self:
            delattr(self.model, _HANDLE_ATTR)


_HANDLE_ATTR = "_qlora_kit_offload"


def enable_offloaded_checkpointing(
    model: nn.Module,
    *,
    first_layers: int | None = None,
    min_bytes: int = MIN_OFFLOAD_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
) -> OffloadHandle:
    """Offload the inputs of ``model``'s checkpointed decoder layers (the first ``first_layers`` of them,
    or all) to host memory.

    Turns non-reentrant gradient checkpointing on if it is off. Idempotent: a second call returns the
    first call's handle, after re-installing the offloading function on any layer whose checkpoint
    function was replaced since (``activation_checkpointing_enable`` installs a plain one). Works on a
    transformers model or a PEFT model around one.

    Args:
        model: a ``PreTrainedModel``, or a wrapper (``PeftModel``, DDP) around one.
        first_layers: offload only the first this many layers' inputs (None: every layer's). The first
            ones: their inputs wait longest for the backward pass, which reaches them last, so copying
            them back overlaps the most compute; the last layers' inputs are needed first.
        min_bytes: layer inputs smaller than this stay on the device.
        chunk_bytes: size of the host buffers.

    Returns:
        The handle; :func:`disable_offloaded_checkpointing` or ``handle.remove()`` undoes it.

    Raises:
        ValueError: the model has no layers transformers can checkpoint, or checkpointing is reentrant.
    """
    base = _transformers_model(model)
    handle = getattr(base, _HANDLE_ATTR, None)
    if handle is None:
        handle = OffloadHandle(base, ActivationOffloader(min_bytes=min_bytes, chunk_bytes=chunk_bytes))
        if not _checkpointing_on(base):
            _set_checkpointing(base, True)
            handle.enabled_checkpointing = True
        setattr(base, _HANDLE_ATTR, handle)
    for layer in _checkpointed_layers(base)[:first_layers]:
        func = _get_checkpoint_func(layer)
        if isinstance(func, OffloadedCheckpoint) and func.offloader is handle.offloader:
            continue  # already installed
        # absent, or replaced since (re-enabling checkpointing installs a plain function again)
        if getattr(func, "keywords", {}).get("use_reentrant", False):
            handle.remove()
            raise ValueError("activation offload needs non-reentrant checkpointing (use_reentrant=False)")
        handle.originals[layer] = func
        _set_checkpoint_func(layer, OffloadedCheckpoint(func, handle.offloader))
    return handle


def disable_offloaded_checkpointing(model: nn.Module) -> bool:
    """Undo :func:`enable_offloaded_checkpointing`; returns whether it was on."""
    handle = getattr(_transformers_model(model), _HANDLE_ATTR, None)
    if handle is None:
        return False
    handle.remove()
    return True


# ------------------------------------------------- transformers internals (lead: move to compat)


def _transformers_model(model: nn.Module) -> nn.Module:
    """The outermost transformers ``PreTrainedModel`` inside ``model`` (itself, PEFT's or DDP's inner one)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise ValueError(f"{type(model).__name__} holds no transformers PreTrainedModel")


def _checkpointed_layers(base: nn.Module) -> list[nn.Module]:
    layers = decoder_layers(base)
    if not layers:
        raise ValueError(f"{type(base).__name__} has no GradientCheckpointingLayer to offload")
    return layers


def _checkpointing_on(base: nn.Module) -> bool:
    # transformers 5.x: `gradient_checkpointing` is the per-layer flag `_set_gradient_checkpointing` sets
    return any(getattr(m, "gradient_checkpointing", False) for m in _checkpointed_layers(base))


def _get_checkpoint_func(layer: nn.Module) -> Callable[..., Any]:
    # transformers 5.x private attribute, set by `_set_gradient_checkpointing`
    return layer._gradient_checkpointing_func


def _set_checkpoint_func(layer: nn.Module, func: Callable[..., Any]) -> None:
    layer._gradient_checkpointing_func = func  # transformers 5.x private attribute


def _set_checkpointing(base: Any, enabled: bool) -> None:
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*; accept both
    prefix = "activation" if hasattr(base, "activation_checkpointing_enable") else "gradient"
    if enabled:
        kwargs = {f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
        getattr(base, f"{prefix}_checkpointing_enable")(**kwargs)
    else:
        getattr(base, f"{prefix}_checkpointing_disable")()
