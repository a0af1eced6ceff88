"""Exporter kinds (the `export` section), registered in :data:`qlora_kit.registry.exporters`: the
adapter in PEFT format, a verified merged 16-bit model, that model as a verified GGUF file, or nothing.

``cfg.export.build().export(model, tokenizer, output_dir, cfg, verify_rows=...)`` writes, under ``output_dir``:

- ``adapter/``: ``adapter_config.json``, ``adapter_model.safetensors``, tokenizer, ``generation_config.json``,
  ``run_config.yaml`` (kinds `adapter` and `merged`);
- ``merged/``: sharded safetensors of the merged model, tokenizer, generation config, run config and
  ``merge_report.json`` (kinds `merged` and `gguf`);
- ``gguf/``: ``model-<dtype>.gguf`` for llama.cpp, its model card and provenance (kind `gguf`; the
  verification report is ``merge_report.json``'s ``gguf`` entry).

Each directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from qlora_kit.export.adapter import ADAPTER_DIR, save_adapter
from qlora_kit.export.gguf_export import GGUF_DIR, export_gguf
from qlora_kit.export.merged import MERGE_REPORT, MERGED_DIR, MergeVerificationWarning, merge_and_verify
from qlora_kit.registry import exporters
from qlora_kit.strict import StrictModel

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_DIR",
    "GGUF_DIR",
    "MERGED_DIR",
    "MERGE_REPORT",
    "AdapterExporter",
    "ExportResult",
    "GGUFExporter",
    "GGUFOptions",
    "MergeVerificationWarning",
    "MergedExporter",
    "MergedOptions",
    "NoExporter",
    "build_exporter",
]


@dataclass
class ExportResult:
    """What an exporter wrote.

    Attributes:
        kind: ``adapter``, ``merged``, ``gguf`` or ``none``.
        adapter_dir: The PEFT adapter directory (kinds adapter, merged and gguf).
        merged_dir: The merged model directory (kinds merged and gguf).
        merge_report: Contents of ``merge_report.json`` (kinds merged and gguf; the GGUF file's
            verification under ``gguf``).
        gguf_file: The `.gguf` file (kind gguf).
    """

    kind: str
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    merge_report: dict[str, Any] | None = None
    gguf_file: Path | None = None

    @property
    def failure(self) -> str | None:
        """The message of each verification that failed (merge, GGUF), or None when all passed."""
        reports = [self.merge_report, (self.merge_report or {}).get("gguf")]
        failed = [r["message"] for r in reports if r is not None and not r["passed"]]
        return "\n".join(failed) or None

    @property
    def merge_failed(self) -> bool:
        """True when a merge (or its GGUF file) was made and failed verification (the CLI exits 3)."""
        return self.failure is not None

    def summary(self) -> str:
        """One line per written directory or file, plus the verification verdicts."""
        written = (("adapter", self.adapter_dir), ("merged", self.merged_dir), ("gguf", self.gguf_file))
        lines = [f"{name}: {path}" for name, path in written if path]
        if self.merge_report is not None:
            lines.append(self.merge_report["message"])
            if "gguf" in self.merge_report:
                lines.append(self.merge_report["gguf"]["message"])
        return "\n".join(lines) or "export: none"


@exporters.register("adapter")
class AdapterExporter:
    """Save the LoRA adapter in PEFT format (plus tokenizer and run config)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def export(
        self, model: Any, tokenizer: Any, output_dir: str | Path, run_cfg: Any, *, verify_rows: Any = None,
        adapter_state: dict[str, Any] | None = None,
    ) -> ExportResult:  # fmt: skip
        """Write ``output_dir/adapter``. ``verify_rows`` is accepted for a uniform call and unused;
        ``adapter_state`` holds the trainable tensors gathered in full when ``model`` is FSDP-sharded."""
        path = save_adapter(
            model, tokenizer, Path(output_dir) / ADAPTER_DIR, run_cfg, state_dict=adapter_state
        )
        logger.debug("adapter saved to %s", path)  # the `export` phase line names it
        return ExportResult(kind="adapter", adapter_dir=path)


class MergedOptions(StrictModel):
    """Settings of the merged export and of its verification."""

    dtype: Literal["float16", "bfloat16"] = "bfloat16"
    """dtype of the merged model (the reference recipe uses float16)."""
    max_shard_size: str = "2GB"
    """Largest safetensors shard."""
    merge_base: Literal["original", "dequantized"] = "dequantized"
    """Merge into the `original` 16-bit weights, or into the `dequantized` NF4 weights the adapter
    was trained against."""
    compare_bases: bool = False
    """Also merge into the other base and report its error beside the chosen one's (a second 16-bit
    model built and measured: seconds to minutes, depending on the model)."""
    max_mean_kl: float = Field(default=0.05, gt=0)
    """Verification tolerance: mean per-token KL(adapter model || merged model) on held-out prompts, in
    nats. A 16-bit merge into the `dequantized` base stays well below it; a merge into the `original`
    weights of a model whose NF4 rounding matters does not."""
    max_abs_logit_diff: float | None = Field(default=None, gt=0)
    """Optional extra tolerance on the largest absolute logit difference. Off by default: in 16-bit
    compute a few large logits (e.g. at the first position) move by whole units from rounding alone."""


@exporters.register("merged")
class MergedExporter:
    """Save the adapter, then merge it into a 16-bit base saved as sharded safetensors, verified
    against the adapter model on held-out rows."""

    Options = MergedOptions

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def export(
        self,
        model: Any,
        tokenizer: Any,
        output_dir: str | Path,
        run_cfg: Any,
        *,
        verify_rows: Sequence[dict[str, Any]] | None = None,
    ) -> ExportResult:
        """Write ``output_dir/adapter`` and ``output_dir/merged`` (with ``merge_report.json``).

        Args:
            verify_rows: Held-out encoded rows (``input_ids``) the logits are compared on; a few
                built-in prompts when None.
        """
        adapter_dir, merged_dir, report = merge_and_verify(
            model, tokenizer, output_dir, run_cfg, self.cfg, verify_rows
        )
        # a passed verification is the `verify` phase's result line already (qlora_kit.phases)
        (logger.debug if report["passed"] else logger.warning)(report["message"])
        return ExportResult("merged", adapter_dir=adapter_dir, merged_dir=merged_dir, merge_report=report)


class GGUFOptions(MergedOptions):
    """Settings of the merged export, its GGUF file and both verifications."""

    gguf_dtype: Literal["auto", "f16", "bf16", "q8_0"] = "auto"
    """Type of the GGUF file's weight matrices: `auto` is the merged model's `dtype` (f16 or bf16); `q8_0`
    (8-bit blocks) is about half the size. Norms stay float32."""
    gguf_max_mean_kl: float = Field(default=0.05, gt=0)
    """GGUF verification tolerance: mean per-token KL(merged model || the GGUF file reloaded by
    transformers) on held-out prompts, in nats. f16/bf16 weights reload exactly; q8_0 stays far below."""


@exporters.register("gguf")
class GGUFExporter:
    """The verified merged model, then one GGUF file of it for llama.cpp (llama-architecture models),
    verified by reloading it."""

    Options = GGUFOptions

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def export(
        self,
        model: Any,
        tokenizer: Any,
        output_dir: str | Path,
        run_cfg: Any,
        *,
        verify_rows: Sequence[dict[str, Any]] | None = None,
    ) -> ExportResult:
        """Write ``adapter/``, ``merged/`` and ``gguf/model-<dtype>.gguf``; both verifications are in
        ``merged/merge_report.json``.

        Raises:
            ExportError: the model's architecture has no GGUF writer here (before anything is merged).
        """
        from qlora_kit.export.files import model_device
        from qlora_kit.export.gguf_writer import check_architecture

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        check_architecture(base.config, type(base).__name__)
        output_dir = Path(output_dir)
        adapter_dir, merged_dir, report = merge_and_verify(
            model, tokenizer, output_dir, run_cfg, self.cfg, verify_rows
        )
        (logger.info if report["passed"] else logger.warning)(report["message"])
        path, report = export_gguf(merged_dir, tokenizer, output_dir, run_cfg, self.cfg, report,
                                   device=model_device(model), verify_rows=verify_rows)  # fmt: skip
        return ExportResult("gguf", adapter_dir, merged_dir, report, gguf_file=path)


@exporters.register("none")
class NoExporter:
    """Keep only the training checkpoints."""

    def __init__(self, cfg: Any = None):
        self.cfg = cfg

    def export(
        self, model: Any, tokenizer: Any, output_dir: str | Path, run_cfg: Any, **_: Any
    ) -> ExportResult:
        """Return an empty result."""
        return ExportResult(kind="none")


def build_exporter(export_cfg: Any) -> Any:
    """The exporter of the `export` section (a validated config, a mapping or a kind name)."""
    return exporters.validate(export_cfg).build()
