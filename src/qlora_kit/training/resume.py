"""Whether a run may resume from a checkpoint: fingerprints of the data and adapter, and the config
fields a resume may change (:data:`qlora_kit.config.resume.RESUMABLE_CHANGES`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from qlora_kit.errors import TrainingError
from qlora_kit.training.checkpoint import CheckpointManager, read_state_file


def data_fingerprint(rows: Any) -> dict[str, Any]:
    """Row count and a hash of every row's ``input_ids`` and ``labels``."""
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        for key in ("input_ids", "labels"):
            digest.update(np.asarray(row[key], dtype=np.int64).tobytes())
            digest.update(b"|")
        count += 1
    return {"rows": count, "sha256": digest.hexdigest()[:16]}


def adapter_fingerprint(model: Any) -> dict[str, Any]:
    """Names and shapes of the trainable parameters (a checkpoint only fits the same adapter)."""
    trainable = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return {"tensors": len(trainable), "sha256": hashlib.sha256(repr(trainable).encode()).hexdigest()[:16]}


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Refuse a resume whose fixed settings differ from the checkpoint's; return the allowed changes.

    ``saved``/``current`` hold ``train`` (the train section), ``data``, ``adapter`` and ``processes``.
    The fields a resume may change are :data:`qlora_kit.config.resume.RESUMABLE_CHANGES`.

    Raises:
        TrainingError: listing every fixed field that differs.
    """
    from qlora_kit.config.resume import config_differences

    conflicts, changes = config_differences(saved, current)
    if conflicts:
        raise TrainingError(
            f"cannot resume from {path}: the run differs from the checkpoint's:\n  "
            + "\n  ".join(conflicts)
            + "\nOnly the fields listed in docs/components/trainer.md may change on resume. Start a new "
            "output_dir, or set train.resume to null (with --overwrite) to start over."
        )
    return [c.removeprefix("train.") for c in changes]


def check_resume_data(output_dir: str | Path, resume: str | None, rows: Any) -> None:
    """Before the model loads: refuse to resume from a checkpoint made on other data, or a damaged one."""
    manager = CheckpointManager(output_dir, keep_last=1)
    path = manager.resolve(resume)
    if path is None:
        return
    manager.require_intact(path)
    saved = read_state_file(path)["trainer"]["fingerprints"].get("data")
    current = data_fingerprint(rows)
    if saved != current:
        raise TrainingError(
            f"cannot resume from {path}: the training data differ from the checkpoint's ({saved} -> {current}). "
            "Use the data the run was started with, or start a new output_dir."
        )
