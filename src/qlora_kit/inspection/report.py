"""The typed inspection report (section 3 of the reference recipe) and its table / JSON renderings.

Built by :mod:`qlora_kit.inspection`; every number in it is measured on loaded models.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

MIB = 1024**2
BLOCK_INDEX = re.compile(r"\.(\d+)\.")


@dataclass
class ModuleChange:
    """A module that quantization replaced, e.g. ``Conv1D(nf=2304, nx=768)`` -> ``Linear4bit(...)``."""

    name: str
    before: str
    after: str


@dataclass
class ParamChange:
    """One parameter's storage before and after quantization."""

    name: str
    shape_before: list[int]
    dtype_before: str
    shape_after: list[int]
    dtype_after: str
    bits: int
    """Bits per weight after quantization (4, 8, or the dtype's width)."""
    logical_shape: list[int] | None = None
    """The weight matrix a packed parameter stands for (``[out, in]``), when packed."""


@dataclass
class LoraRow:
    """LoRA parameters of the modules sharing one name pattern (layer index as ``*``)."""

    pattern: str
    count: int
    in_features: int
    out_features: int
    r: int
    per_module: int
    """r x (in + out), plus out for DoRA's magnitude vector."""
    total: int


@dataclass
class AdapterSummary:
    """The trainable-parameter arithmetic of the adapter."""

    r: int
    alpha: float
    targets: list[str]
    rows: list[LoraRow]
    lora_params_formula: int
    """Sum of r x (in + out) over the wrapped modules."""
    trainable_measured: int
    """Parameters with ``requires_grad`` (adapter, plus modules_to_save and trained biases)."""
    total_params: int
    """Base parameters (logical) + parameters the adapter adds (LoRA, modules_to_save copies)."""
    trainable_percent: float


@dataclass
class InspectionReport:
    """Quantization and parameter report: counts, footprints, replaced modules, dtypes, LoRA arithmetic."""

    model: str
    model_type: str
    quantization: str
    base_params: int
    """Parameters of the original model."""
    quantized_params_logical: int
    """Parameters of the quantized model, each packed 4-bit weight counted once."""
    quantized_elements_stored: int
    """Elements of the quantized model's tensors (a packed uint8 element holds two 4-bit weights)."""
    params_by_storage: dict[str, int]
    """Logical parameters of the quantized model by storage: `4-bit`, `8-bit`, or a dtype name."""
    original_footprint_bytes: int
    """``get_memory_footprint()`` of the original model."""
    original_estimate_bytes: int
    """The reference recipe's formula: 4 bytes x parameters (fp32)."""
    quantized_footprint_bytes: int
    """``get_memory_footprint()`` of the quantized model (parameters and buffers)."""
    quantized_estimate_bytes: float
    """The reference recipe's formula: 0.5 B x 4-bit (1 B x 8-bit) parameters + 2 B x the rest."""
    quant_constants_bytes: int
    """Quantization constants (absmax, double-quant state, code books) held outside parameters."""
    buffer_bytes: int
    """Buffers of the quantized model (counted in its footprint)."""
    replaced_modules: list[ModuleChange]
    params: list[ParamChange]
    adapter: AdapterSummary | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The whole report as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    def to_table(self) -> str:
        """A readable text table; repeated blocks (layer index > 0) are summarised, the JSON has all."""
        lines = [f"model: {self.model} ({self.model_type})   quantization: {self.quantization}", ""]
        lines += self._count_lines() + [""] + self._memory_lines() + [""]
        lines += self._module_lines() + [""] + self._param_lines()
        if self.adapter is not None:
            lines += [""] + self._adapter_lines(self.adapter)
        if self.notes:
            lines += ["", "Notes"] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------------------------- rendering

    def _count_lines(self) -> list[str]:
        rows = [
            ("parameters (original)", self.base_params),
            ("parameters (quantized, logical)", self.quantized_params_logical),
            ("elements stored (quantized)", self.quantized_elements_stored),
        ]
        rows += [(f"  stored as {kind}", n) for kind, n in self.params_by_storage.items()]
        return ["Parameters"] + [f"  {label:<36}{n:>16,}" for label, n in rows]

    def _memory_lines(self) -> list[str]:
        stored = {k: v for k, v in self.params_by_storage.items() if k not in ("4-bit", "8-bit")}
        rest = sum(stored.values())
        packed = ", ".join(
            f"{b} B x {self.params_by_storage[k]:,}"
            for k, b in (("4-bit", 0.5), ("8-bit", 1))
            if k in self.params_by_storage
        )
        return [
            f"Memory footprint (MiB = 1024^2 bytes){'':<8}measured     formula",
            f"  original{'':<37}{self.original_footprint_bytes / MIB:>8.2f}  {self.original_estimate_bytes / MIB:>10.2f}"
            f"  (4 B x {self.base_params:,})",
            f"  quantized{'':<36}{self.quantized_footprint_bytes / MIB:>8.2f}  {self.quantized_estimate_bytes / MIB:>10.2f}"
            f"  ({packed + ' + ' if packed else ''}2 B x {rest:,})",
            f"  quantization constants (not counted){'':<9}{self.quant_constants_bytes / MIB:>8.2f}",
            f"  buffers (counted){'':<28}{self.buffer_bytes / MIB:>8.2f}",
        ]

    def _module_lines(self) -> list[str]:
        shown = [m for m in self.replaced_modules if _first_block(m.name)]
        head = f"Replaced modules ({len(self.replaced_modules)}; first block shown)"
        width = max((len(m.name) for m in shown), default=0)
        return [head] + [f"  {m.name:<{width}}  {m.before} -> {m.after}" for m in shown]

    def _param_lines(self) -> list[str]:
        shown = [p for p in self.params if _first_block(p.name)]
        width = max((len(p.name) for p in shown), default=0)
        lines = [f"Parameters before -> after ({len(self.params)}; first block shown)"]
        for p in shown:
            after = f"{p.shape_after} {p.dtype_after}"
            if p.logical_shape is not None:
                after += f" ({p.bits}-bit {p.logical_shape})"
            lines.append(f"  {p.name:<{width}}  {p.shape_before} {p.dtype_before} -> {after}")
        return lines

    def _adapter_lines(self, a: AdapterSummary) -> list[str]:
        width = max((len(row.pattern) for row in a.rows), default=6)
        lines = [
            f"LoRA (r={a.r}, alpha={a.alpha:g}, targets {', '.join(a.targets)})",
            f"  {'module':<{width}}  count      in     out   r x (in + out)          total",
        ]
        for row in a.rows:
            lines.append(
                f"  {row.pattern:<{width}}  {row.count:>5}  {row.in_features:>6}  {row.out_features:>6}"
                f"  {row.per_module:>15,}  {row.total:>13,}"
            )
        base = self.quantized_params_logical
        lines += [
            f"  adapter parameters (formula){'':<10}{a.lora_params_formula:>16,}",
            f"  trainable parameters (measured){'':<7}{a.trainable_measured:>16,}",
            f"  base parameters{'':<23}{base:>16,}",
            f"  total parameters{'':<22}{a.total_params:>16,}",
            f"  trainable{'':<29}{a.trainable_percent:>15.4f}%",
        ]
        return lines


def _first_block(name: str) -> bool:
    """Whether ``name`` is outside repeated blocks or in block 0 (the table's sample)."""
    return all(index == "0" for index in BLOCK_INDEX.findall(name + "."))
