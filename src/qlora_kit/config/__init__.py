"""Typed run configuration: one strict pydantic model per component, composed into :class:`RunConfig`.

Every section forbids unknown keys (with a "did you mean" hint), is frozen, and documents each field
with its attribute docstring, which also becomes the JSON-schema description. Closed choices
(quantization, optimizer, scheduler, export) are discriminated unions on ``kind``; the open choice
(prompt formatters) goes through :mod:`qlora_kit.registry`.
"""

from __future__ import annotations

from pydantic import Field

from qlora_kit.config.base import DType, StrictModel, kind_union
from qlora_kit.config.data import DataConfig, EvalSplitConfig, FormatterSpec, SourceConfig, SubsetConfig
from qlora_kit.config.export import AdapterExport, ExportConfig, MergedExport, NoExport
from qlora_kit.config.model import (
    AdapterConfig,
    Bnb4bitQuant,
    Bnb8bitQuant,
    ModelConfig,
    NoQuant,
    QuantConfig,
)
from qlora_kit.config.train import (
    AdamW8bit,
    AdamWTorch,
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    OptimizerConfig,
    PagedAdamW8bit,
    PagedAdamW32bit,
    SchedulerConfig,
    TrainConfig,
)

__all__ = [
    "AdamW8bit", "AdamWTorch", "AdapterConfig", "AdapterExport", "Bnb4bitQuant", "Bnb8bitQuant",
    "ConstantSchedule", "CosineSchedule", "DType", "DataConfig", "EvalSplitConfig", "ExportConfig",
    "FormatterSpec", "LinearSchedule", "MergedExport", "ModelConfig", "NoExport", "NoQuant",
    "OptimizerConfig", "PagedAdamW8bit", "PagedAdamW32bit", "QuantConfig", "RunConfig",
    "SchedulerConfig", "SourceConfig", "StrictModel", "SubsetConfig", "TrainConfig", "kind_union",
]  # fmt: skip


# ------------------------------------------------------------------------------------------- run


class RunConfig(StrictModel):
    """A whole fine-tuning run."""

    output_dir: str = "runs/qlora"
    """Where checkpoints, reports, metrics and exports are written."""
    plugins: list[str] = Field(default_factory=list)
    """Python modules imported before validation (they register formatters)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    quant: QuantConfig = Field(default_factory=Bnb4bitQuant)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=AdapterExport)
