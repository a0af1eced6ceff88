"""Explanations attached to an inspection report: why measured numbers differ from the reference recipe's formula
and figures. The numbers in them are measured; only the wording is written here.
"""

from __future__ import annotations

from typing import Any

from qlora_kit.inspection.report import MIB, InspectionReport

# The reference recipe's figures (distilgpt2, transformers 4.x), quoted where a report is compared with them.
SEED_PARAMS = 81_912_576
SEED_FP32_ESTIMATE_MB = 308.66


def explain(report: InspectionReport, original: Any, base: Any) -> list[str]:
    """The notes of ``report`` for the models it was measured on."""
    notes = [_mib_note()]
    notes += _packing_notes(report)
    notes += _dtype_notes(report)
    notes += _footprint_notes(report)
    if report.model_type == "gpt2":
        notes += _gpt2_buffer_notes(report, original.config)
    return notes


def _mib_note() -> str:
    return "Sizes are MiB (1024^2 bytes); the reference recipe's 'MB' are the same unit."


def _packing_notes(report: InspectionReport) -> list[str]:
    four_bit = report.params_by_storage.get("4-bit", 0)
    if not four_bit:
        return []
    notes = [
        f"Quantization keeps the parameter count ({report.quantized_params_logical:,}) but not the element "
        f"count: the {four_bit:,} 4-bit weights are packed two per uint8 element, so the quantized tensors "
        f"hold {report.quantized_elements_stored:,} elements (what a plain numel() sum reports)."
    ]
    conv = next((m for m in report.replaced_modules if m.before.startswith("Conv1D")), None)
    if conv is not None:
        param = next(p for p in report.params if p.name == conv.name + ".weight")
        notes.append(
            f"GPT-2's Conv1D stores its weight as [in, out] ({conv.name}.weight {param.shape_before}); "
            f"transformers' bitsandbytes integration transposes it to Linear4bit's [out, in] before "
            f"quantizing (measured quant_state shape {param.logical_shape}, packed {param.shape_after})."
        )
    return notes


def _rest(report: InspectionReport) -> dict[str, int]:
    return {k: n for k, n in report.params_by_storage.items() if k not in ("4-bit", "8-bit")}


def _dtype_notes(report: InspectionReport) -> list[str]:
    rest = _rest(report)
    if not rest or not (report.params_by_storage.keys() & {"4-bit", "8-bit"}):
        return []
    dtypes = ", ".join(rest)
    if set(rest) <= {"bfloat16", "float16"}:
        return [
            f"Non-quantized parameters (embeddings, norms, biases, output head) are stored in {dtypes}, the "
            "compute dtype. The reference recipe saw float16 there (transformers 4.x defaulted 4-bit loads to float16); "
            "both are 2 bytes, so the reference recipe's 2-byte formula applies."
        ]
    return [
        f"Non-quantized parameters are stored in {dtypes} (the compute dtype asked for), not the 2 bytes the "
        "reference recipe's formula assumes (it saw float16); the quantized footprint is larger accordingly."
    ]


def _footprint_notes(report: InspectionReport) -> list[str]:
    notes = []
    gap = report.quantized_footprint_bytes - report.quantized_estimate_bytes
    width_gap = sum((_width(k) - 2) * n for k, n in _rest(report).items())
    notes.append(
        f"Quantized: measured - formula = {gap / MIB:.2f} MiB = buffers {report.buffer_bytes / MIB:.2f} MiB"
        f" + non-quantized parameters wider than 2 bytes {width_gap / MIB:.2f} MiB."
    )
    if report.quant_constants_bytes:
        true_size = report.quantized_footprint_bytes + report.quant_constants_bytes
        notes.append(
            "get_memory_footprint counts parameters and buffers only: the 4-bit layers' quantization "
            f"constants (absmax per block, double-quantized, their scales and code books) add "
            f"{report.quant_constants_bytes / MIB:.2f} MiB outside them, so the quantized model really "
            f"occupies {true_size / MIB:.2f} MiB."
        )
    gap = report.original_footprint_bytes - report.original_estimate_bytes
    if gap:
        notes.append(
            f"Original: measured - fp32 formula = {gap / MIB:.2f} MiB (stored dtype and buffers; the formula "
            "assumes 4-byte parameters and no buffers)."
        )
    if report.base_params == SEED_PARAMS:
        notes.append(
            f"The reference recipe's fp32 estimate reads {SEED_FP32_ESTIMATE_MB} MB, but 4 B x {SEED_PARAMS:,} / 1024^2 "
            f"= {4 * SEED_PARAMS / MIB:.2f} MiB: an arithmetic slip in the reference recipe."
        )
    return notes


def _width(kind: str) -> int:
    import torch

    return torch.empty(0, dtype=getattr(torch, kind)).element_size()


def _gpt2_buffer_notes(report: InspectionReport, config: Any) -> list[str]:
    # transformers 4.x registered, per block, a bool causal mask `attn.bias` [1, 1, P, P] and a float32
    # scalar `attn.masked_bias`; get_memory_footprint counts buffers. transformers 5 builds masks per call.
    legacy = config.n_layer * (config.n_positions**2 + 4)
    seed = (
        " These are the reference recipe's 318.47 and 101.49 MB: its quantized-vs-formula gap (101.49 vs 95.49) is "
        "these buffers."
        if report.base_params == SEED_PARAMS
        else ""
    )
    return [
        f"Older transformers (the reference recipe's) registered per GPT-2 block a bool causal mask `attn.bias` [1, 1, "
        f"{config.n_positions}, {config.n_positions}] and a float32 `attn.masked_bias`: {legacy / MIB:.2f} MiB "
        f"for {config.n_layer} blocks, counted by get_memory_footprint. transformers 5 registers none "
        f"(measured buffers: {report.buffer_bytes} bytes). With them the footprints would be "
        f"{(report.original_footprint_bytes + legacy) / MIB:.2f} MiB (original) and "
        f"{(report.quantized_footprint_bytes + legacy) / MIB:.2f} MiB (quantized).{seed}"
    ]
