"""The base model: loading (hub id, local directory, GGUF file), quantization kinds, LoRA adapters."""

from qlora_kit.model.adapters import AdapterBuilder, linear_layer_names
from qlora_kit.model.loading import ModelLoader, prepare_for_training, resolve_device

__all__ = ["AdapterBuilder", "ModelLoader", "linear_layer_names", "prepare_for_training", "resolve_device"]
