"""Checkpoints: atomic ``accelerator.save_state`` folders with the adapter only, keep-last-K, resume checks.

A checkpoint folder ``output_dir/checkpoint-<step>`` holds what ``accelerator.save_state`` writes
(``model.safetensors`` restricted to the trainable parameters, optimizer, scheduler, RNG states, the
fp16 scaler), a PEFT-format ``adapter/`` loadable on its own, and ``trainer_state.json`` (step, epoch,
position in the epoch, fingerprints of the training config and data). It is written under a hidden
temporary name, fsynced, then renamed: a crash mid-save leaves the previous checkpoints untouched and
never a half-written ``checkpoint-<step>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qlora_kit.config import TrainConfig
from qlora_kit.errors import TrainingError
from qlora_kit.files import fsync_tree, replace_dir
from qlora_kit.training.state import TrainerState

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# Fields that change the optimisation trajectory; logging, eval and checkpoint cadence may change on resume.
_TRAINING_FIELDS = (
    "epochs", "max_steps", "micro_batch_size", "grad_accum", "optimizer", "scheduler",
    "max_grad_norm", "mixed_precision", "seed",
)  # fmt: skip


# -------------------------------------------------------------------------------- fingerprints


def config_fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """The training-relevant part of the config, as plain JSON values."""
    return cfg.model_dump(mode="json", include=set(_TRAINING_FIELDS))


def data_fingerprint(rows: Any, collate_fn: Any) -> dict[str, Any]:
    """Row count, a hash of every row's ``input_ids`` and ``labels``, and the collator's settings."""
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        for key in ("input_ids", "labels"):
            digest.update(np.asarray(row[key], dtype=np.int64).tobytes())
            digest.update(b"|")
        count += 1
    return {"rows": count, "sha256": digest.hexdigest()[:16], "collator": _describe(collate_fn)}


def adapter_fingerprint(model: Any) -> dict[str, Any]:
    """Names and shapes of the trainable parameters (a checkpoint only fits the same adapter)."""
    trainable = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return {"tensors": len(trainable), "sha256": hashlib.sha256(repr(trainable).encode()).hexdigest()[:16]}


def _describe(obj: Any) -> str:
    if is_dataclass(obj):
        return f"{type(obj).__name__}({', '.join(f'{f.name}={getattr(obj, f.name)!r}' for f in fields(obj))})"
    return getattr(obj, "__qualname__", type(obj).__qualname__)


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise a TrainingError listing every fingerprint entry that differs between checkpoint and run."""
    old, new = _flatten(saved), _flatten(current)
    changes = [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old | new)
        if old.get(key) != new.get(key)
    ]
    if changes:
        raise TrainingError(
            f"cannot resume from {path}: the run differs from the checkpoint's:\n  "
            + "\n  ".join(changes)
            + "\nStart a new output_dir, or set train.resume to null to start over."
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# ---------------------------------------------------------------------------------- save/load


class CheckpointManager:
    """Saves, finds, prunes and loads the checkpoints of one output directory."""

    def __init__(self, output_dir: str | Path, keep_last: int):
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.output_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint ``train.resume`` points at: ``auto`` = the latest here (or none), else a path."""
        if resume is None:
            return None
        if resume == "auto":
            found = self.checkpoints()
            return found[-1] if found else None
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise TrainingError(f"train.resume: {path} is not a checkpoint folder (no {STATE_FILE})")
        return path

    def save(self, accelerator: Any, state: TrainerState, model: Any) -> Path:
        """Write ``checkpoint-<step>`` atomically (every process must call this) and prune old ones."""
        final = self.output_dir / f"checkpoint-{state.step}"
        tmp = self.output_dir / f".checkpoint-{state.step}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process's RNG file is in tmp before the rename
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            if hasattr(unwrapped, "save_pretrained"):
                unwrapped.save_pretrained(str(tmp / "adapter"))
            (tmp / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=2))
            fsync_tree(tmp)
            replace_dir(tmp, final)
            self._prune()
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Any, path: Path) -> TrainerState:
        """Restore adapter, optimizer, scheduler, RNG and scaler from ``path``; return its TrainerState."""
        accelerator.load_state(str(path))
        return read_state(path)

    def clean_temporary(self) -> None:
        """Remove folders left by saves that crashed before their rename."""
        if self.output_dir.is_dir():
            for p in self.output_dir.glob(".checkpoint-*"):
                shutil.rmtree(p, ignore_errors=True)

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def read_state(path: Path) -> TrainerState:
    """The TrainerState saved in checkpoint ``path``."""
    return TrainerState.from_dict(json.loads((Path(path) / STATE_FILE).read_text()))


# --------------------------------------------------------------------------- adapter-only state


def register_adapter_only_hooks(accelerator: Any, model: Any) -> list[Any]:
    """Make ``save_state``/``load_state`` store only ``model``'s trainable tensors (not the 4-bit base).

    Accelerate lists the model it saves without its DDP wrapper, so both forms are recognised.
    Returns the hook handles; call ``.remove()`` on them when done.
    """
    targets = (model, accelerator.unwrap_model(model))

    def ours(m: Any) -> bool:
        return any(m is t for t in targets)

    def trainable(m: Any) -> set[str]:
        return {name for name, p in m.named_parameters() if p.requires_grad}

    def save_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, m in enumerate(models):
            if ours(m):
                keep = trainable(m)
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        for m in [m for m in models if ours(m)]:
            models.remove(m)  # loaded here, strictly, instead of by accelerate
            expected = trainable(m)
            tensors = load_file(os.path.join(input_dir, "model.safetensors"))
            missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            if missing or unexpected:
                raise TrainingError(
                    f"checkpoint {input_dir} does not match the adapter: missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]}"
                )
            m.load_state_dict(tensors, strict=False)

    return [
        accelerator.register_save_state_pre_hook(save_hook),
        accelerator.register_load_state_pre_hook(load_hook),
    ]
