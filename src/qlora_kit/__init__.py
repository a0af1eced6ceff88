"""qlora_kit: QLoRA fine-tuning of causal language models with plugin-style components.

Importing the package is cheap: the components (and torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily so `qlora-kit validate` starts fast)
_EXPORTS = {
    "RunConfig": "qlora_kit.config",
    "load_config": "qlora_kit.config.io",
    "QloraKitError": "qlora_kit.errors",
    "ConfigError": "qlora_kit.errors",
    "StrictModel": "qlora_kit.strict",
    "formatters": "qlora_kit.registry",
    "quantization": "qlora_kit.registry",
    "adapters": "qlora_kit.registry",
    "losses": "qlora_kit.registry",
    "optimizers": "qlora_kit.registry",
    "schedulers": "qlora_kit.registry",
    "exporters": "qlora_kit.registry",
    "callbacks": "qlora_kit.registry",
    "PromptFormatter": "qlora_kit.formatting",
    "Segment": "qlora_kit.formatting",
    "ModelLoader": "qlora_kit.model.loading",
    "prepare_for_training": "qlora_kit.model.prepare",
    "AdapterBuilder": "qlora_kit.model.adapters",
    "Quantization": "qlora_kit.model.quant",
    "Callback": "qlora_kit.training",
    "inspect_model": "qlora_kit.inspection",
    "build_formatter": "qlora_kit.formatting",
    "build_datasets": "qlora_kit.data",
    "Trainer": "qlora_kit.training",
    "TrainResult": "qlora_kit.training",
    "build_exporter": "qlora_kit.export",
    "ExportResult": "qlora_kit.export",
    "load_exported": "qlora_kit.generation",
    "generate": "qlora_kit.generation",
    "run": "qlora_kit.recipe",
    "RunResult": "qlora_kit.recipe",
    "quickstart": "qlora_kit.quickstart",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qlora_kit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
