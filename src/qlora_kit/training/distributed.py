"""Several GPUs through Accelerate: what FSDP2 with a 4-bit base needs, checked before training starts.

DDP needs nothing beyond the Trainer's token-normalised loss (summed over processes). FSDP2 shards the
model; with bitsandbytes 4-bit weights that only works when the packed weights are stored in a float
dtype (``quant.quant_storage: auto`` picks the compute dtype under FSDP) and gathered without a dtype
cast (:func:`gather_4bit_weights_uncast`): FSDP2's mixed-precision cast rewrote packed bytes on two
H200s (bitsandbytes issue 1945 is the same family of failure). Either way a wrong decode is silent, so a
sharded run first proves that its forward pass equals the unsharded model's on a few tokens
(:func:`check_sharded_forward`) and refuses to train if not.

Checkpoints stay adapter-only: the trainable tensors are gathered in full (:func:`full_trainable_state`)
and the optimizer state through ``torch.distributed.checkpoint``'s full state dicts.
"""

from __future__ import annotations

from typing import Any

import torch

from qlora_kit.errors import ConfigError, TrainingError

UNSHARDABLE_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
"""bitsandbytes optimizers keep their state in their own layout, which FSDP can neither shard nor save."""

FORWARD_TOLERANCE = 1e-2
"""Largest relative difference (max |Δ| / max |logit|) allowed between the sharded and unsharded forward
passes of the same tokens under the same autocast: reduction order only. Wrongly decoded 4-bit weights
(bitsandbytes issue 1945) move logits by far more."""


def is_fsdp(accelerator: Any) -> bool:
    """The accelerator shards the model with FSDP."""
    return str(getattr(accelerator, "distributed_type", "")).endswith("FSDP")


def check_fsdp_settings(train_cfg: Any, model: Any) -> None:
    """Refuse combinations FSDP cannot run, before anything is sharded.

    Raises:
        ConfigError: a bitsandbytes optimizer, or 4-bit weights stored as integers.
    """
    kind = train_cfg.optimizer.kind
    if kind in UNSHARDABLE_OPTIMIZERS:
        raise ConfigError([("train.optimizer.kind", f"{kind} keeps its state in bitsandbytes' own layout, which "
                            "FSDP cannot shard or save; use adamw_torch under FSDP")])  # fmt: skip
    packed = [
        n
        for n, p in model.named_parameters()
        if type(p).__name__ == "Params4bit" and not p.is_floating_point()
    ]
    if packed:
        raise ConfigError([("quant.quant_storage", f"4-bit weights stored as integers ({packed[0]}, ...) cannot be "
                            "sharded: set quant.quant_storage to auto or to the compute dtype")])  # fmt: skip


SHARDED_EXPORTS = ("adapter", "none")
"""Export kinds a sharded run can write itself: the adapter is gathered from the shards; a merged model or
GGUF file needs the whole base, which no process holds."""


def check_fsdp_export(export_kind: str) -> None:
    """Refuse, before anything loads, an export an FSDP run cannot write (its base weights are sharded).

    Raises:
        ConfigError: naming ``export.kind``, with the two-step way to get a merged model.
    """
    if export_kind not in SHARDED_EXPORTS:
        raise ConfigError([("export.kind", f"{export_kind} needs the whole base model, which FSDP shards across "
                            "processes; train with export.kind: adapter, then run `qlora-kit export RUN_DIR --kind "
                            f"{export_kind}` in one process")])  # fmt: skip


def gather_4bit_weights_uncast(accelerator: Any, model: Any) -> bool:
    """Under FSDP2, gather parameters in the dtype they are stored in when the model has 4-bit weights;
    True when the policy was changed.

    FSDP2's mixed-precision policy casts every parameter to ``param_dtype`` as it gathers it. Packed 4-bit
    weights are bytes that only look like bfloat16, and the cast rewrote them: on two H200s 10 of a tiny
    model's 14 packed weights came back changed and the logits moved by 7% (benchmarks/gpu/fsdp_probe.py);
    without the cast all 14 were bit-equal and the logits identical. The compute still runs in the
    compute dtype: Accelerate wraps the forward in autocast.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    has_4bit = any(type(p).__name__ == "Params4bit" for p in model.parameters())
    if plugin is None or getattr(plugin, "fsdp_version", 1) != 2 or not has_4bit:
        return False
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin.mixed_precision_policy = MixedPrecisionPolicy()
    return True


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """``value`` as a plain tensor: under FSDP2 the gradient norm comes back as a (replicated) DTensor,
    which ``torch.stack`` with plain tensors and ``.tolist()`` refuse."""
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else value


def probe_ids(model: Any, tokens: int = 16) -> torch.Tensor:
    """A fixed batch of token ids every process builds identically."""
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(1945))


def probe_logits(model: Any, ids: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """Logits of ``ids`` in eval mode under the accelerator's autocast, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), accelerator.autocast():
            return model(input_ids=ids.to(accelerator.device), use_cache=False).logits.float().cpu()
    finally:
        model.train(was_training)


def check_sharded_forward(before: torch.Tensor, after: torch.Tensor) -> float:
    """Refuse to train when the sharded forward differs from the unsharded one; return the difference.

    Raises:
        TrainingError: naming the difference and the likely cause.
    """
    scale = max(before.abs().max().item(), 1e-6)
    difference = (after - before).abs().max().item() / scale
    if not torch.isfinite(after).all() or difference > FORWARD_TOLERANCE:
        raise TrainingError(
            f"the FSDP-sharded model's logits differ from the unsharded model's by {difference:.3g} (relative; "
            f"tolerance {FORWARD_TOLERANCE}): the sharded 4-bit weights do not decode to the same values "
            "(bitsandbytes issue 1945). Training would silently train another model, so it stops here. Use DDP "
            "if the model fits one GPU"
        )
    return difference


def reshard_root(model: Any) -> None:
    """Free the parameters the root FSDP2 module keeps gathered after a forward pass.

    FSDP2 does not reshard the root after its forward, expecting the backward next. After the forward
    check no backward follows, so without this every GPU would hold the root's own parameters (for a
    causal LM the embedding and the head) in full until the first step. (On the 8B shape on two H200s
    memory after loading stayed 3.80 GiB per GPU with and without it, against 2.75 for an even split of
    one GPU's 5.50: that excess has another cause, not yet found.)
    """
    reshard = getattr(model, "reshard", None)  # FSDPModule.reshard; absent on a model FSDP did not wrap
    if callable(reshard):
        reshard()


def full_trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """Every trainable tensor, gathered in full on every process (a collective: all must call it)."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            value = param.full_tensor() if hasattr(param, "full_tensor") else param
            state[name] = value.detach().to("cpu", copy=True).contiguous()
    return state


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer state of a sharded model as a full state dict (a collective: all must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, _inner(optimizer), options=options)


def load_full_state(
    model: Any, optimizer: Any, trainable: dict[str, torch.Tensor], optim: dict[str, Any]
) -> None:
    """Load full trainable tensors and optimizer state into a sharded model (a collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, trainable, options=options)
    set_optimizer_state_dict(model, _inner(optimizer), optim, options=options)


def _inner(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
