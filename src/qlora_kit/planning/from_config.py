"""What the planner reads from a run config: the model's shape (its ``config.json`` alone), the memory
settings the config asks for, the adapter and the compute dtype."""

from __future__ import annotations

from typing import Any

from qlora_kit.model.lora_dropout import LIGHT_MIN_HIDDEN, LightDropoutLinear
from qlora_kit.planning.settings import Adapter, Settings, layouts
from qlora_kit.planning.shape import ModelShape, load_model_config, model_shape
from qlora_kit.training.compiling import compile_decision


def shape_of(cfg: Any) -> ModelShape:
    """The :class:`ModelShape` of ``cfg.model`` (its config.json), with ``cfg.quant``'s skip list."""
    config = load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)
    return model_shape(config, list(getattr(cfg.quant, "skip_modules", [])), cfg.model.trust_remote_code)


def candidate_settings(cfg: Any) -> list[tuple[bool, bool]]:
    """``(checkpointing, offload)`` pairs the config allows, fastest first (`auto` allows both values)."""
    t = cfg.train
    return [(c, o) for c, o, some in layouts(t.grad_checkpointing, t.activation_offload) if not some]


def settings_of(cfg: Any, shape: ModelShape) -> Settings:
    """The config's checkpointing, offload, loss and compilation on a GPU; `auto` checkpointing or offload
    plan as the first setting the config allows, `auto` loss as chunked."""
    checkpointing, offload = candidate_settings(cfg)[0]
    loss = getattr(cfg.train.loss, "kind", cfg.train.loss)
    compiled, _ = compile_decision(cfg.train.compile, shape.hidden, "cuda", offloading=False)
    return Settings(grad_checkpointing=checkpointing, activation_offload=offload,
                    loss="chunked" if loss == "auto" else loss, compiled=compiled)  # fmt: skip


def adapter_of(cfg: Any, shape: ModelShape | None = None) -> Adapter:
    """What the planner needs of ``cfg.adapter`` and ``cfg.train.optimizer`` (for a model of ``shape``:
    whether ``AdapterBuilder`` gives it the light dropout, and whether compiled layers keep it: the library's
    ``LightDropoutLinear.in_compiled``)."""
    a = cfg.adapter
    light = getattr(a, "light_dropout", True) and (shape is None or shape.hidden >= LIGHT_MIN_HIDDEN)
    return Adapter(r=a.r, dropout=a.dropout, target_modules=a.target_modules, light_dropout=light,
                   light_in_compiled=light and LightDropoutLinear.in_compiled,
                   modules_to_save=tuple(a.modules_to_save), optimizer=cfg.train.optimizer.kind)  # fmt: skip


def dtype_bytes_of(cfg: Any) -> int:
    """Bytes per element of the config's compute dtype (`auto` plans as bf16: the planner plans GPUs)."""
    return 4 if cfg.quant.compute_dtype == "float32" else 2
