"""Export a finished run again from its output dir (``qlora-kit export OUTPUT_DIR``), e.g. as a merged
model or a GGUF file after an adapter-only run, or into the other merge base."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qlora_kit.config.io import RUN_CONFIG_FILE
from qlora_kit.errors import QloraKitError
from qlora_kit.export.adapter import ADAPTER_DIR

logger = logging.getLogger(__name__)


def trained_adapter_dir(output_dir: Path) -> Path:
    """The adapter of a run: ``adapter/`` if it was exported, else the latest checkpoint's ``adapter/``.

    Raises:
        QloraKitError: the run has neither.
    """
    from qlora_kit.training.checkpoint import CheckpointManager

    if (output_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        return output_dir / ADAPTER_DIR
    checkpoints = CheckpointManager(output_dir, keep_last=1).checkpoints()
    if checkpoints and (checkpoints[-1] / ADAPTER_DIR / "adapter_config.json").is_file():
        return checkpoints[-1] / ADAPTER_DIR
    raise QloraKitError(f"{output_dir}: no adapter/ and no checkpoint-*/adapter/ to export from")


def held_out_rows(cfg: Any, tokenizer: Any) -> Any:
    """The run's held-out rows (or training rows) for merge verification; None when the data cannot be
    rebuilt here (e.g. a hub dataset offline), in which case built-in prompts are used."""
    from qlora_kit.data import build_datasets, build_formatter

    try:
        bundle = build_datasets(cfg.data, build_formatter(cfg.data.formatter), tokenizer)
    except QloraKitError as exc:
        logger.warning("cannot rebuild the run's data for verification (%s); using built-in prompts", exc)
        return None
    return bundle.eval if bundle.eval is not None else bundle.train


def export_run(
    output_dir: str | Path,
    overrides: Iterable[str] = (),
    device: str | None = None,
    *,
    allow_code: bool = False,
) -> Any:
    """Load a run's base and trained adapter, then export per its config's `export` section with
    ``overrides`` applied (e.g. ``export.kind=merged``, ``export.merge_base=original``).

    Holds the run directory's lock while it writes, and refreshes the directory's manifest after.

    Args:
        allow_code: Import the run config's plugins and trust its model code (``--trust-code``).

    Returns:
        The :class:`~qlora_kit.export.ExportResult`.
    """

    from qlora_kit.config.io import load_run_config
    from qlora_kit.generation import load_adapter_model, require_intact_export
    from qlora_kit.rundir import RunDir, RunLock

    output_dir = Path(output_dir)
    if not (output_dir / RUN_CONFIG_FILE).is_file():
        raise QloraKitError(
            f"{output_dir}: no {RUN_CONFIG_FILE}; is it the output_dir of a `qlora-kit train` run?"
        )
    cfg = load_run_config(output_dir / RUN_CONFIG_FILE, overrides, allow_code=allow_code)
    if cfg.export.kind == "none":
        raise QloraKitError("export.kind is `none`; pass export.kind=adapter, merged or gguf")
    with RunDir(output_dir, RunLock(output_dir).acquire(), resuming=False) as run_dir:
        source = trained_adapter_dir(output_dir)
        require_intact_export(source)
        model, tokenizer = load_adapter_model(source, cfg, device)
        rows = held_out_rows(cfg, tokenizer) if cfg.export.kind in ("merged", "gguf") else None
        result = cfg.export.build().export(model, tokenizer, output_dir, cfg, verify_rows=rows)
        run_dir.finish(cfg)
    return result
