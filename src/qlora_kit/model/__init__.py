"""The base model: loading (hub id, local directory, GGUF file), quantization kinds, LoRA adapters."""

from qlora_kit.model.adapters import AdapterBuilder, linear_layer_names
from qlora_kit.model.loading import ModelLoader, resolve_device
from qlora_kit.model.prepare import prepare_for_training, set_grad_checkpointing

__all__ = [
    "AdapterBuilder", "ModelLoader", "linear_layer_names", "prepare_for_training", "resolve_device",
    "set_grad_checkpointing",
]  # fmt: skip
