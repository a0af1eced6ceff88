"""Merged export: the adapter folded into a 16-bit base, saved as sharded safetensors, then verified.

Two bases can receive the adapter, and both are always measured:

- ``original``: the base reloaded in 16 bits from its source, as the reference recipe does. The adapter was trained
  against NF4-rounded weights, so the merged model differs from the trained one by the quantization error.
- ``dequantized``: the 4-bit weights the adapter was trained against, dequantized. The merged model then
  reproduces the trained model up to 16-bit rounding.
"""

from __future__ import annotations

import gc
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from qlora_kit.export.adapter import save_adapter
from qlora_kit.export.card import write_model_card
from qlora_kit.export.files import generation_config_for, model_device, write_run_files
from qlora_kit.export.provenance import record_provenance
from qlora_kit.export.verify import compare_logits, computes_upcast, logits_of, verification_inputs
from qlora_kit.files import atomic_dir
from qlora_kit.phases import start_phase
from qlora_kit.rundir.manifest import write_manifest

logger = logging.getLogger(__name__)

MERGED_DIR = "merged"
MERGE_REPORT = "merge_report.json"
BASES = ("original", "dequantized")


class MergeVerificationWarning(UserWarning):
    """The merged model's logits differ from the adapter model's by more than the tolerance."""


def dequantized_weights(model: Any) -> dict[str, torch.Tensor]:
    """The dequantized weight of every bitsandbytes 4-bit or 8-bit layer, by the layer's name in the
    base model without PEFT's ``.base_layer`` (shape ``[out, in]``, as ``nn.Linear`` holds it)."""
    from qlora_kit.compat import dequantize_bnb_layer
    from qlora_kit.model.quant import keep_4bit_weights_trainable

    keep_4bit_weights_trainable(model)  # a CPU-packed 4-bit layout would not dequantize correctly
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights = {}
    for name, module in base.named_modules():
        weight = dequantize_bnb_layer(module)
        if weight is not None:
            weights[name.replace(".base_layer", "")] = weight
    return weights


def load_weights_into(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``[out, in]`` weights into ``model``'s layers of the same names (GPT-2's ``Conv1D`` stores
    the transpose)."""
    from transformers.pytorch_utils import Conv1D

    for name, weight in weights.items():
        module = model.get_submodule(name)
        value = weight.t() if isinstance(module, Conv1D) else weight
        if tuple(module.weight.shape) != tuple(value.shape):
            raise RuntimeError(
                f"merge: {name} has shape {tuple(module.weight.shape)}, dequantized {tuple(value.shape)}"
            )
        with torch.no_grad():
            module.weight.copy_(value.to(module.weight.dtype))


def build_merged(base: str, trained: Any, run_cfg: Any, adapter_dir: Path, dtype: str) -> Any:
    """A plain transformers model: the base (``original`` or ``dequantized``) in ``dtype`` with the saved
    adapter merged in. The base is reloaded through :class:`~qlora_kit.model.loading.ModelLoader`, so the
    source (hub, directory, GGUF) and the tokenizer's pad policy (resized embeddings) are the training run's."""
    from peft import PeftModel

    from qlora_kit.model.loading import ModelLoader

    unquantized = {"kind": "none", "compute_dtype": dtype}
    model, _ = ModelLoader(run_cfg.model, unquantized, device=model_device(trained)).load()
    if base == "dequantized":
        load_weights_into(model, dequantized_weights(trained))
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def merge_and_verify(
    model: Any, tokenizer: Any, output_dir: str | Path, run_cfg: Any, cfg: Any, verify_rows: Any = None
) -> tuple[Path, Path, dict[str, Any]]:
    """Save the adapter, merge it into ``cfg.merge_base`` (and, with ``cfg.compare_bases``, into the other
    base too, for the report), measure it against the adapter model, and save it (with
    ``merge_report.json``) atomically.

    Returns:
        (adapter_dir, merged_dir, report). ``report["passed"]`` is False when the chosen base's max
        absolute logit difference exceeds ``cfg.max_abs_logit_diff``; a warning says so too.
    """
    output_dir = Path(output_dir)
    adapter_dir = save_adapter(model, tokenizer, output_dir / "adapter", run_cfg)
    inputs = verification_inputs(tokenizer, verify_rows)
    verifying = start_phase("verify", f"the merged model against the adapter model, on {len(inputs)} prompts")
    reference = logits_of(model, inputs)
    errors: dict[str, dict[str, float]] = {}
    if cfg.compare_bases:  # the other base first, then freed: one 16-bit copy beside the trained model
        other = next(b for b in BASES if b != cfg.merge_base)
        merged = build_merged(other, model, run_cfg, adapter_dir, cfg.dtype)
        errors[other] = compare_logits(reference, logits_of(merged, inputs))
        del merged
        gc.collect()
    merged = build_merged(cfg.merge_base, model, run_cfg, adapter_dir, cfg.dtype)
    errors[cfg.merge_base] = compare_logits(reference, logits_of(merged, inputs))
    report = _report(cfg, errors, len(inputs), verify_rows is not None)
    report["computed_in"] = (
        "float32 (the float16 weights, on the CPU)" if computes_upcast(merged) else cfg.dtype
    )
    verifying.end(report["message"] if report["passed"] else "FAILED (see the warning below)")
    target = output_dir / MERGED_DIR
    with atomic_dir(target) as tmp:
        merged.save_pretrained(tmp, max_shard_size=cfg.max_shard_size)
        tokenizer.save_pretrained(tmp)
        generation_config_for(model, tokenizer, run_cfg).save_pretrained(tmp)
        write_run_files(tmp, run_cfg)
        (tmp / MERGE_REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        record_provenance(tmp, "merged", run_cfg, model=model)
        write_model_card(tmp, "merged", run_cfg, merge_report=report, run_dir=output_dir, tokenizer=tokenizer,
                         path=target.resolve())  # fmt: skip
        write_manifest(tmp, export="merged")  # last: it lists every file above
    # The adapter's card names merged/ as its 16-bit alternative, with these numbers; its manifest follows.
    write_model_card(
        adapter_dir, "adapter", run_cfg, merge_report=report, run_dir=output_dir, tokenizer=tokenizer
    )
    write_manifest(adapter_dir, export="adapter")
    if not report["passed"]:
        warnings.warn(report["message"], MergeVerificationWarning, stacklevel=2)
    return adapter_dir, target, report


def _report(cfg: Any, errors: dict[str, dict[str, float]], prompts: int, held_out: bool) -> dict[str, Any]:
    chosen = errors[cfg.merge_base]
    failures = []
    if chosen["mean_kl"] > cfg.max_mean_kl:
        failures.append(f"mean KL {chosen['mean_kl']:.3g} > {cfg.max_mean_kl}")
    if cfg.max_abs_logit_diff is not None and chosen["max_abs_logit_diff"] > cfg.max_abs_logit_diff:
        failures.append(f"max |logit diff| {chosen['max_abs_logit_diff']:.4g} > {cfg.max_abs_logit_diff}")
    where = f"merge_base={cfg.merge_base}, {cfg.dtype}"
    if failures:
        message = (
            f"MERGE VERIFICATION FAILED: the merged model ({where}) differs from the trained adapter model: "
            f"{'; '.join(failures)} (top-1 agreement {chosen['top1_agreement']:.1%}). The merged weights were "
            "saved; use the adapter instead"
            + (
                ", or export.merge_base=dequantized (the weights it was trained on)."
                if cfg.merge_base == "original"
                else "."
            )
        )
    else:
        message = (
            f"merge verified ({where}): mean KL {chosen['mean_kl']:.3g} <= {cfg.max_mean_kl}, "
            f"top-1 agreement {chosen['top1_agreement']:.1%}, max |logit diff| {chosen['max_abs_logit_diff']:.4g}"
        )
    return {
        "passed": not failures,
        "message": message,
        "merge_base": cfg.merge_base,
        "dtype": cfg.dtype,
        "tolerance": {"max_mean_kl": cfg.max_mean_kl, "max_abs_logit_diff": cfg.max_abs_logit_diff},
        "prompts": prompts,
        "prompt_source": "held-out rows" if held_out else "built-in prompts",
        "bases": {base: errors[base] for base in BASES if base in errors},
    }
