"""Typed run configuration: one strict pydantic model per section, composed into :class:`RunConfig`.

Every section forbids unknown keys (with a "did you mean" hint), is frozen, and documents each field
with its attribute docstring, which also becomes the JSON-schema description. Sections that choose a
component (`quant`, `adapter`, `data.formatter`, `train.optimizer`, `train.scheduler`, `train.loss`,
`train.callbacks`, `export`) are validated by their `kind` through :mod:`qlora_kit.registry`, so plugin
kinds work exactly like built-ins.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from qlora_kit.config.data import DataConfig, EvalSplitConfig, FormatterSpec, SourceConfig, SubsetConfig
from qlora_kit.config.model import ModelConfig
from qlora_kit.config.train import CallbackSpec, LossSpec, OptimizerSpec, SchedulerSpec, TrainConfig
from qlora_kit.registry import adapters, exporters, quantization
from qlora_kit.strict import DType, StrictModel

QuantSpec = quantization.field_type("bnb_4bit")
"""A `quant` section: `{kind: <registered quantization kind>, <its options>}`."""
AdapterSpec = adapters.field_type("lora")
"""An `adapter` section: `{kind: <registered adapter method>, <its options>}` (kind defaults to lora)."""
ExportSpec = exporters.field_type("adapter")
"""An `export` section: `{kind: <registered exporter>, <its options>}`."""

__all__ = [
    "AdapterSpec", "CallbackSpec", "DType", "DataConfig", "EvalSplitConfig", "ExportSpec", "FormatterSpec",
    "LossSpec", "ModelConfig", "OptimizerSpec", "QuantSpec", "RunConfig", "SchedulerSpec", "SourceConfig",
    "StrictModel", "SubsetConfig", "TrainConfig",
]  # fmt: skip


class RunConfig(StrictModel):
    """A whole fine-tuning run."""

    output_dir: str = "runs/qlora"
    """Where checkpoints, reports, metrics and exports are written."""
    plugins: list[str] = Field(default_factory=list)
    """Python modules imported before validation (they register formatters, quantization kinds,
    adapter methods, losses, optimizers, schedules, exporters or callbacks)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantSpec = quantization.default("bnb_4bit")
    """How the base model's weights are stored: a registered quantization kind."""
    adapter: AdapterSpec = adapters.default("lora")
    """What is trained: a registered adapter method (LoRA by default)."""
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportSpec = exporters.default("adapter")
    """What is written after training: a registered exporter."""

    @model_validator(mode="after")
    def _evaluation_has_data(self) -> RunConfig:
        if self.train.eval_every is not None and self.data.eval is None:
            raise ValueError(
                "train.eval_every is set but there is no eval data: set data.eval (a fraction or a source), "
                "or train.eval_every: null"
            )
        return self
