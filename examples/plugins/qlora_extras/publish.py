"""An exporter kind, `publish`: save the adapter as the built-in `adapter` exporter does, then copy it into
a team's model store as ``<target_dir>/<name>/`` with a small ``publish.json`` (what it is, where it came
from, the sha256 of its weights), so others can find and check it without reading the run directory.

    export: {kind: publish, target_dir: /shared/adapters, name: dolly-r8}
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_kit import __version__, exporters
from qlora_kit.errors import ExportError
from qlora_kit.export import ExportResult
from qlora_kit.files import atomic_dir
from qlora_kit.rundir.manifest import file_sha256, write_manifest
from qlora_kit.strict import StrictModel

logger = logging.getLogger(__name__)

PUBLISH_FILE = "publish.json"


@dataclass
class PublishResult(ExportResult):
    """The adapter export, plus where it was published."""

    published_dir: Path | None = None

    def summary(self) -> str:
        return f"{super().summary()}\npublished: {self.published_dir}"


@exporters.register("publish")
class PublishExporter:
    """Save the adapter, then copy it with a `publish.json` summary into `target_dir`/`name`."""

    class Options(StrictModel):
        target_dir: str
        """The model store: a directory that holds one sub-directory per published adapter."""
        name: str | None = None
        """The adapter's name in the store; default: the run's output directory's name."""
        overwrite: bool = False
        """Replace an adapter already published under this name (otherwise that is an error)."""

    def __init__(self, config: Any):
        self.config = config

    def export(
        self, model: Any, tokenizer: Any, output_dir: str | Path, run_cfg: Any, *, verify_rows: Any = None
    ) -> PublishResult:
        """Write ``output_dir/adapter`` (the `adapter` exporter), then ``<target_dir>/<name>``."""
        output_dir = Path(output_dir)
        target = Path(self.config.target_dir) / (self.config.name or output_dir.resolve().name)
        if target.exists() and not self.config.overwrite:
            raise ExportError(f"export.target_dir: {target} is already published; set export.overwrite=true")
        adapter = exporters.make("adapter").build().export(model, tokenizer, output_dir, run_cfg)
        with atomic_dir(target) as tmp:  # a reader of the store never sees a half-copied adapter
            shutil.copytree(adapter.adapter_dir, tmp, dirs_exist_ok=True)
            (tmp / PUBLISH_FILE).write_text(_summary(model, run_cfg, output_dir, tmp), encoding="utf-8")
            write_manifest(tmp, export="publish")  # `qlora-kit verify` checks the copy, summary included
        logger.info("adapter published to %s", target)
        return PublishResult("publish", adapter_dir=adapter.adapter_dir, published_dir=target)


def _summary(model: Any, run_cfg: Any, output_dir: Path, copied: Path) -> str:
    import json

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (
        json.dumps(
            {
                "published": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "run": str(output_dir.resolve()),
                "base_model": run_cfg.model.name_or_path,
                "quant": run_cfg.quant.kind,
                "adapter": {"kind": run_cfg.adapter.kind, "trainable_parameters": trainable},
                "weights_sha256": file_sha256(copied / "adapter_model.safetensors"),
                "qlora_kit": __version__,
            },
            indent=2,
        )
        + "\n"
    )
