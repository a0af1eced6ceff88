"""Planning: predict a training step's peak GPU memory and speed from a model's config.json alone,
say whether it fits a GPU, and choose checkpointing / activation offload and the micro-batch size.

- ``shape``: the model's dimensions and parameter layout, from an empty (meta-device) model
- ``memory``: peak memory by component (weights, quantization constants, adapter, optimizer,
  activations with and without checkpointing and offload, the loss)
- ``speed``: FLOPs per token and tokens/s at an assumed efficiency
- ``plan``: :func:`plan_run`, :func:`choose_settings`, :class:`Plan` (``to_text``, ``to_json``)
"""

from qlora_kit.planning.memory import Adapter, MemoryEstimate, Settings, estimate_memory
from qlora_kit.planning.plan import Plan, choose_settings, plan_run
from qlora_kit.planning.shape import ModelShape, load_model_config, model_shape
from qlora_kit.planning.speed import SpeedEstimate, estimate_speed

__all__ = [
    "Adapter", "MemoryEstimate", "ModelShape", "Plan", "Settings", "SpeedEstimate", "choose_settings",
    "estimate_memory", "estimate_speed", "load_model_config", "model_shape", "plan_run",
]  # fmt: skip
