"""Inspection: section 3 of the reference recipe (quantization and trainable-parameter analysis) for any model.

:func:`inspect_model` loads what a run config describes; :func:`inspect_loaded` measures models that
are already loaded. Everything in the report is measured; only the explanations in its notes are
written here (:mod:`qlora_kit.inspection.notes`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from qlora_kit.inspection.notes import explain
from qlora_kit.inspection.report import (
    BLOCK_INDEX,
    AdapterSummary,
    InspectionReport,
    LoraRow,
    ModuleChange,
    ParamChange,
)

_WRAPPER_PARTS = (".base_layer", ".original_module")


def inspect_model(cfg: Any, device: str | torch.device | None = None) -> InspectionReport:
    """Load the original and the quantized model of ``cfg``, apply its adapter, and report.

    The original is loaded on the CPU in its stored dtype (as the reference recipe's ``from_pretrained(model_id)``
    did); the quantized one through :class:`~qlora_kit.model.loading.ModelLoader` on ``device``.
    """
    from qlora_kit.model.adapters import AdapterBuilder
    from qlora_kit.model.loading import ModelLoader

    loader = ModelLoader(cfg.model, cfg.quant, device)
    loader.check()  # a missing model, a hub that cannot be reached: one line, before any loading
    original = loader.load_original()
    builder = AdapterBuilder(cfg.adapter)
    builder.lora_config(original)  # a bad target fails here, before the quantized load
    quantized = loader.load_model()
    peft_model = builder.apply(quantized)
    report = inspect_loaded(original, peft_model, name=cfg.model.name_or_path, quant_cfg=cfg.quant)
    if cfg.model.name_or_path.endswith(".gguf"):
        report.notes.append(
            f"The original is the GGUF file dequantized to float32 once (cached at {loader.source()}); "
            "bitsandbytes quantized that copy, not the GGUF's own quantized blocks."
        )
    return report


def inspect_loaded(
    original: nn.Module, model: nn.Module, *, name: str | None = None, quant_cfg: Any = None
) -> InspectionReport:
    """Report on an original model and its quantized counterpart, optionally wrapped in a PeftModel.

    Args:
        original: the model as stored (before quantization).
        model: the quantized model, or a ``PeftModel`` around it (then the LoRA arithmetic is included).
        name: what to call the model in the report (default: its config's ``_name_or_path``).
        quant_cfg: the `quant` section, for the report's description of the quantization.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stored = _storage_counts(base)
    report = InspectionReport(
        model=name or getattr(original.config, "_name_or_path", ""),
        model_type=getattr(original.config, "model_type", type(original).__name__),
        quantization=_describe(quant_cfg, base),
        base_params=sum(p.numel() for p in original.parameters()),
        quantized_params_logical=sum(stored.values()),
        quantized_elements_stored=sum(p.numel() for _, p in _base_params(base)),
        params_by_storage=stored,
        original_footprint_bytes=original.get_memory_footprint(),
        original_estimate_bytes=4 * sum(p.numel() for p in original.parameters()),
        quantized_footprint_bytes=_footprint(base),
        quantized_estimate_bytes=_seed_estimate(stored),
        quant_constants_bytes=_quant_constant_bytes(base),
        buffer_bytes=sum(b.numel() * b.element_size() for b in base.buffers()),
        replaced_modules=_replaced_modules(original, base),
        params=_param_changes(original, base),
        adapter=_adapter_summary(model, sum(stored.values())) if base is not model else None,
    )
    report.notes = explain(report, original, base)
    return report


# ---------------------------------------------------------------------------------- measurements


def _logical_numel(param: torch.Tensor) -> int:
    state = getattr(param, "quant_state", None)  # Params4bit: the packed tensor holds [out, in]
    return int(state.shape.numel()) if state is not None else param.numel()


def _storage_kind(param: torch.Tensor) -> str:
    kind = type(param).__name__
    if kind == "Params4bit":
        return "4-bit"
    if kind == "Int8Params":
        return "8-bit"
    return str(param.dtype).replace("torch.", "")


def _base_params(base: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base model's parameters under their original names (adapter weights left out)."""
    out = []
    for name, param in base.named_parameters():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        for part in _WRAPPER_PARTS:
            name = name.replace(part, "")
        out.append((name, param))
    return out


def _storage_counts(base: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for _, param in _base_params(base):
        counts[_storage_kind(param)] += _logical_numel(param)
    return dict(sorted(counts.items()))


def _footprint(base: nn.Module) -> int:
    """``get_memory_footprint()`` of the base model, adapter weights excluded."""
    params = sum(p.numel() * p.element_size() for _, p in _base_params(base))
    return params + sum(b.numel() * b.element_size() for b in base.buffers())


def _seed_estimate(stored: dict[str, int]) -> float:
    widths = {"4-bit": 0.5, "8-bit": 1.0}
    return sum(widths.get(kind, 2.0) * n for kind, n in stored.items())


def _quant_constant_bytes(base: nn.Module) -> int:
    total = 0
    for module in base.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None or type(module.weight).__name__ != "Params4bit":
            continue
        for value in state.as_dict(packed=True).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def _module_repr(module: nn.Module) -> str:
    return f"{type(module).__name__}({module.extra_repr() or _conv1d_repr(module)})"


def _conv1d_repr(module: nn.Module) -> str:
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    return f"nf={nf}, nx={nx}" if nf is not None else ""


def _replaced_modules(original: nn.Module, base: nn.Module) -> list[ModuleChange]:
    after = dict(base.named_modules())
    changes = []
    for name, module in original.named_modules():
        if not name or list(module.children()):
            continue
        new = after.get(name)
        new = new.get_base_layer() if hasattr(new, "get_base_layer") else new
        if new is not None and type(new) is not type(module):
            changes.append(ModuleChange(name, _module_repr(module), _module_repr(new)))
    return changes


def _param_changes(original: nn.Module, base: nn.Module) -> list[ParamChange]:
    after = dict(_base_params(base))
    changes = []
    for name, before in original.named_parameters():
        new = after.get(name)
        if new is None:
            continue
        kind = _storage_kind(new)
        packed = kind in ("4-bit", "8-bit")
        state = getattr(new, "quant_state", None)
        changes.append(
            ParamChange(
                name=name,
                shape_before=list(before.shape),
                dtype_before=str(before.dtype).replace("torch.", ""),
                shape_after=list(new.shape),
                dtype_after=str(new.dtype).replace("torch.", ""),
                bits=4 if kind == "4-bit" else 8 if kind == "8-bit" else new.element_size() * 8,
                logical_shape=list(state.shape) if packed and state is not None else None,
            )
        )
    return changes


def _adapter_summary(model: nn.Module, base_logical: int) -> AdapterSummary:
    from peft.tuners.lora import LoraLayer

    config = model.peft_config[model.active_adapter]
    groups: dict[tuple[str, int, int, int], int] = defaultdict(int)
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer) and model.active_adapter in module.r:
            pattern = BLOCK_INDEX.sub(".*.", name)
            groups[(pattern, module.in_features, module.out_features, module.r[model.active_adapter])] += 1
    rows = []
    for (pattern, n_in, n_out, r), count in groups.items():
        per = r * (n_in + n_out) + (n_out if config.use_dora else 0)
        rows.append(LoraRow(pattern, count, n_in, n_out, r, per, per * count))
    lora = sum(row.total for row in rows)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # New parameters: LoRA weights and modules_to_save copies (trained base biases are not new)
    added = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or ".modules_to_save." in n)
    total = base_logical + added
    targets = config.target_modules
    return AdapterSummary(
        r=config.r,
        alpha=config.lora_alpha,
        targets=sorted(targets) if isinstance(targets, (set, list)) else [str(targets)],
        rows=rows,
        lora_params_formula=lora,
        trainable_measured=trainable,
        total_params=total,
        trainable_percent=100.0 * trainable / total,
    )


def _describe(quant_cfg: Any, base: nn.Module) -> str:
    if quant_cfg is not None:
        fields = quant_cfg.model_dump(exclude={"kind"})
        return f"{quant_cfg.kind} " + ", ".join(f"{k}={v}" for k, v in fields.items() if v not in ([], None))
    config = getattr(getattr(base, "config", None), "quantization_config", None)
    return type(config).__name__ if config is not None else "none"
