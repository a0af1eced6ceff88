"""Running a causal LM without its output head: the final hidden states, and a check that the split is exact.

How: the output head (``get_output_embeddings()`` of the causal LM inside any PEFT / DDP /
``torch.compile`` wrapper) is swapped, for one forward pass, for a module that records its input
and returns an empty tensor. The model is called as a whole (not its ``get_decoder()`` backbone)
because only the outermost call carries what the wrappers add: accelerate's autocast around
``forward``, DDP's gradient-sync bookkeeping, PEFT's adapter dispatch, and any scaling a model
applies *before* its head (MiniCPM divides the hidden states). The autocast state seen by the head
is recorded too, so the caller can run the real head under the same precision as the forward would.

What this cannot see is a transform *after* the head (Gemma2/3 soft-capping, Cohere's logit_scale,
Granite's logits_scaling): :func:`check_head_split` finds those by running the model both ways.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qlora_kit.training.evaluation import inference_mode
from qlora_kit.training.loss import model_inputs

PROBE_LOGIT = 1000.0
"""Largest value the post-head probe feeds through the model: far beyond any soft-cap or scale."""


class HeadSplitError(RuntimeError):
    """The model's output head cannot be found, or its forward does not call it."""


@dataclass
class OutputHead:
    """The output head of a causal LM and where it hangs (``getattr(parent, name) is module``)."""

    module: nn.Module
    parent: nn.Module
    name: str
    model_name: str
    """Class name of the unwrapped causal LM, for messages."""


@dataclass
class HeadInput:
    """What the output head would have received during a forward pass."""

    hidden: torch.Tensor
    """The head's input, ``[B, T, H]`` (the final, normed hidden states)."""
    head: nn.Module
    """The head itself (a Linear, a PEFT LoRA layer or ``modules_to_save`` wrapper); call it as a module."""
    device_type: str
    autocast_dtype: torch.dtype
    autocast_enabled: bool

    def autocast(self) -> AbstractContextManager:
        """The autocast state the head ran under in the forward pass (accelerate sets it inside ``forward``)."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast_enabled)


def unwrap_causal_lm(model: Any) -> nn.Module:
    """The transformers causal LM inside DDP / DataParallel, ``torch.compile`` and ``PeftModel`` wrappers."""
    from peft import PeftModel

    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, PeftModel):
            model = model.get_base_model()
        else:
            return model


def find_head(model: Any) -> OutputHead:
    """The output head of ``model`` (``get_output_embeddings()``, as PEFT may have wrapped it) and its parent.

    Raises:
        HeadSplitError: the model has no ``get_output_embeddings`` or it returns None, or the head is not
            a sub-module of the model.
    """
    lm = unwrap_causal_lm(model)
    name = type(lm).__name__
    get = getattr(lm, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise HeadSplitError(f"{name} has no output head (get_output_embeddings() gives none)")
    for parent in lm.modules():
        for child_name, child in parent.named_children():
            if child is head:
                return OutputHead(head, parent, child_name, name)
    raise HeadSplitError(f"{name}'s output head {type(head).__name__} is not one of its sub-modules")


class _HeadStandIn(nn.Module):
    """Takes the head's place for one forward: records the input, returns ``output`` (default: nothing)."""

    def __init__(self, output: torch.Tensor | None = None):
        super().__init__()
        self.output = output
        self.seen: tuple[torch.Tensor, str, torch.dtype, bool] | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kind = hidden.device.type
        self.seen = (hidden, kind, torch.get_autocast_dtype(kind), torch.is_autocast_enabled(kind))
        # An empty last dimension: whatever the model does to its "logits" afterwards costs nothing.
        return hidden[..., :0] if self.output is None else self.output


@contextmanager
def _standing_in(head: OutputHead, stand_in: nn.Module) -> Iterator[None]:
    setattr(head.parent, head.name, stand_in)  # a module swap, so the head's own hooks do not fire
    try:
        yield
    finally:
        setattr(head.parent, head.name, head.module)


def _forward_without_head(
    model: Any, inputs: Mapping[str, Any], head: OutputHead, stand_in: _HeadStandIn
) -> Any:
    with _standing_in(head, stand_in):
        out = model(**inputs, use_cache=False)
    if stand_in.seen is None:
        raise HeadSplitError(
            f"{head.model_name}'s forward does not call its output head {head.name!r} as a module"
        )
    return out


def final_hidden_states(model: Any, batch: Mapping[str, torch.Tensor]) -> HeadInput:
    """Run ``model`` on ``batch`` (``labels`` ignored) without its output head; return the head's input.

    Works through PEFT, DDP, ``torch.compile`` and accelerate's autocast wrappers; gradient checkpointing
    of the decoder layers is unaffected (the head is outside them).

    Raises:
        HeadSplitError: see :func:`find_head`, or the forward never called the head.
    """
    head = find_head(model)
    inputs = model_inputs(batch)
    stand_in = _HeadStandIn()
    _forward_without_head(model, inputs, head, stand_in)
    hidden, kind, dtype, enabled = stand_in.seen  # type: ignore[misc]
    return HeadInput(hidden, head.module, kind, dtype, enabled)


def check_head_split(model: Any, n_tokens: int = 8) -> str | None:
    """Whether ``head(final hidden states)`` gives exactly the model's logits; the reason when it does not.

    Runs the model (eval mode, ``no_grad``; train mode is restored) on ``n_tokens`` tokens three ways:
    the plain forward; the forward without its head, then the head applied to the recorded input
    (the two must agree: fp32 within 1e-4, 16-bit within 1e-2, relative to ``max(1, max |logit|)``);
    and a forward whose head returns probe logits up to +-:data:`PROBE_LOGIT`, which must come out
    unchanged, so soft-capping or scaling after the head is caught even when a random model's logits
    are too small to show it.

    Returns:
        None when the split is exact, else one line saying why (the head is missing, not called, or
        its output is transformed).
    """
    try:
        head = find_head(model)
    except HeadSplitError as exc:
        return str(exc)
    lm = unwrap_causal_lm(model)
    device = _input_device(lm)
    vocab = getattr(head.module, "out_features", None) or lm.config.get_text_config().vocab_size
    ids = (torch.arange(1, n_tokens + 1, device=device) % vocab)[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with inference_mode(model):
        reference = model(**inputs, use_cache=False).logits
        try:
            split = final_hidden_states(model, inputs)
            with split.autocast():
                ours = head.module(split.hidden)
            probe = _probe_like(ours)
            # a copy goes in, so a model that rescales its logits in place cannot hide it
            probed = _forward_without_head(model, inputs, head, _HeadStandIn(probe.clone())).logits
        except HeadSplitError as exc:
            return str(exc)
        except Exception as exc:  # e.g. a forward that reads the head's weight directly: no split here
            return f"{head.model_name}'s forward fails without its output head ({type(exc).__name__}: {exc})"
    return _post_head_change(head, probe, probed) or _mismatch(head, reference, ours)


def _input_device(lm: nn.Module) -> torch.device:
    embeddings = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(lm.parameters()).device


def _probe_like(logits: torch.Tensor) -> torch.Tensor:
    ramp = torch.linspace(-PROBE_LOGIT, PROBE_LOGIT, logits.shape[-1], device=logits.device)
    return ramp.expand_as(logits).to(logits.dtype)


def _mismatch(head: OutputHead, reference: torch.Tensor, ours: torch.Tensor) -> str | None:
    if reference.shape != ours.shape:
        return (
            f"{head.model_name}'s logits have shape {tuple(reference.shape)} but its output head "
            f"{head.name!r} gives {tuple(ours.shape)}"
        )
    tolerance = 1e-4 if ours.dtype == torch.float32 else 1e-2
    scale = max(1.0, reference.float().abs().max().item())
    diff = (ours.float() - reference.float()).abs().max().item()
    if not diff <= tolerance * scale:  # written so that NaN fails too
        return (
            f"{head.model_name}'s logits differ from its output head {head.name!r} applied to the final hidden "
            f"states by {diff:.3g} (tolerance {tolerance * scale:.3g}): the forward does more than apply the head"
        )
    return None


def _post_head_change(head: OutputHead, probe: torch.Tensor, probed: torch.Tensor) -> str | None:
    if probed.shape != probe.shape:
        return f"{head.model_name}'s forward changes the shape of its head's output ({tuple(probe.shape)} -> {tuple(probed.shape)})"
    diff = (probed.float() - probe.float()).abs()
    if not diff.max().item() <= 1e-3 * PROBE_LOGIT:
        worst = int(diff.flatten().argmax())
        return (
            f"{head.model_name}'s forward transforms its head's output (soft-capping or scaling?): a logit of "
            f"{probe.flatten()[worst].item():.4g} from {head.name!r} comes out as {probed.flatten()[worst].item():.4g}"
        )
    return None
