"""Getting a loaded model ready to train adapters: frozen base, no KV cache, activation checkpointing."""

from __future__ import annotations

from typing import Any

from qlora_kit.compat import decoder_layers


def prepare_for_training(model: Any, grad_checkpointing: bool | str) -> Any:
    """k-bit training preparation without peft's fp32 upcasting.

    What ``peft.prepare_model_for_kbit_training`` does, minus casting every non-quantized parameter
    (embeddings, norms, output head) to fp32: freeze the base, disable the KV cache, and set
    activation checkpointing per ``grad_checkpointing`` (:func:`set_grad_checkpointing`; `auto` leaves
    it off here: the Trainer decides from the memory plan).
    """
    for param in model.parameters():
        param.requires_grad_(False)
    model.config.use_cache = False
    set_grad_checkpointing(model, grad_checkpointing is True)
    return model


def set_grad_checkpointing(model: Any, enabled: bool, first_layers: int | None = None) -> None:
    """Turn activation checkpointing of the decoder layers on or off (also on a PEFT-wrapped model); with
    ``first_layers``, on for only that many decoder layers, the first ones (the others keep their
    activations: faster, for more memory; the planner picks the count).

    Non-reentrant checkpointing recomputes with the same RNG state (LoRA dropout masks repeat) and needs
    no input that requires grad, so the frozen embeddings' output is left without one (peft's
    ``enable_input_require_grads`` would make autograd compute a gradient nobody uses, and keep the first
    layer's input alive). transformers 5 renamed ``gradient_checkpointing_*`` to
    ``activation_checkpointing_*``; both names are accepted.
    """
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    if enabled and hasattr(model, f"{prefix}_checkpointing_enable"):
        kwargs = {f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
        getattr(model, f"{prefix}_checkpointing_enable")(**kwargs)
        disable_input_require_grads(model)  # transformers turns it on with checkpointing
        if first_layers is not None:
            for layer in decoder_layers(model)[first_layers:]:
                layer.gradient_checkpointing = False  # the flag transformers checks per layer
    elif not enabled and hasattr(model, f"{prefix}_checkpointing_disable"):
        getattr(model, f"{prefix}_checkpointing_disable")()


def disable_input_require_grads(model: Any) -> None:
    """Remove the hooks that make the embeddings' output require grad (transformers' public
    ``disable_input_require_grads``; a no-op when none is registered)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()
