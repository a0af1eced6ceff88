"""Export after training: the adapter in PEFT format, or a verified merged 16-bit model, or nothing.

``build_exporter(cfg.export).export(model, tokenizer, output_dir, cfg)`` writes, under ``output_dir``:

- ``adapter/``: ``adapter_config.json``, ``adapter_model.safetensors``, tokenizer, ``generation_config.json``,
  ``run_config.yaml`` (kinds `adapter` and `merged`);
- ``merged/``: sharded safetensors of the merged model, tokenizer, generation config, run config and
  ``merge_report.json`` (kind `merged`).

Each directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_kit.export.adapter import ADAPTER_DIR, save_adapter
from qlora_kit.export.merged import MERGE_REPORT, MERGED_DIR, MergeVerificationWarning, merge_and_verify

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_DIR",
    "MERGED_DIR",
    "MERGE_REPORT",
    "AdapterExporter",
    "ExportResult",
    "MergeVerificationWarning",
    "MergedExporter",
    "NoExporter",
    "build_exporter",
]


@dataclass
class ExportResult:
    """What an exporter wrote.

    Attributes:
        kind: ``adapter``, ``merged`` or ``none``.
        adapter_dir: The PEFT adapter directory (kinds adapter and merged).
        merged_dir: The merged model directory (kind merged).
        merge_report: Contents of ``merge_report.json`` (kind merged).
    """

    kind: str
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    merge_report: dict[str, Any] | None = None

    @property
    def merge_failed(self) -> bool:
        """True when a merge was made and failed verification (the CLI exits non-zero)."""
        return self.merge_report is not None and not self.merge_report["passed"]

    def summary(self) -> str:
        """One line per written directory, plus the verification verdict."""
        lines = [
            f"{name}: {path}"
            for name, path in (("adapter", self.adapter_dir), ("merged", self.merged_dir))
            if path
        ]
        if self.merge_report is not None:
            lines.append(self.merge_report["message"])
        return "\n".join(lines) or "export: none"


class AdapterExporter:
    """Saves the adapter in PEFT format (``export.kind: adapter``)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def export(
        self, model: Any, tokenizer: Any, output_dir: str | Path, run_cfg: Any, *, verify_rows: Any = None
    ) -> ExportResult:
        """Write ``output_dir/adapter``. ``verify_rows`` is accepted for a uniform call and unused."""
        path = save_adapter(model, tokenizer, Path(output_dir) / ADAPTER_DIR, run_cfg)
        logger.info("adapter saved to %s", path)
        return ExportResult(kind="adapter", adapter_dir=path)


class MergedExporter:
    """Saves the adapter, then a verified merged model (``export.kind: merged``)."""

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
        (logger.info if report["passed"] else logger.warning)(report["message"])
        return ExportResult("merged", adapter_dir=adapter_dir, merged_dir=merged_dir, merge_report=report)


class NoExporter:
    """Writes nothing (``export.kind: none``): the training checkpoints are the result."""

    def __init__(self, cfg: Any = None):
        self.cfg = cfg

    def export(
        self, model: Any, tokenizer: Any, output_dir: str | Path, run_cfg: Any, **_: Any
    ) -> ExportResult:
        """Return an empty result."""
        return ExportResult(kind="none")


_EXPORTERS = {"adapter": AdapterExporter, "merged": MergedExporter, "none": NoExporter}


def build_exporter(export_cfg: Any) -> AdapterExporter | MergedExporter | NoExporter:
    """The exporter for the `export` section (its ``kind`` picks the class)."""
    return _EXPORTERS[export_cfg.kind](export_cfg)
