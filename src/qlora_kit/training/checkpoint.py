"""Checkpoints: everything a run needs to continue exactly, in safetensors and JSON only.

``output_dir/checkpoint-<step>`` holds:

- ``adapter/``: the trained weights once, in PEFT's format (``PeftModel.from_pretrained`` loads it), plus
  ``trainable_extra.safetensors`` for any trainable tensor PEFT does not save (none with LoRA);
- ``optimizer.safetensors``: the optimizer state's tensors (its structure is in the state file);
- ``rng-<rank>.safetensors``: each process's generator states (dropout masks repeat exactly);
- ``trainer_state.json``: progress (:class:`~qlora_kit.training.state.TrainerState`), the fingerprints
  a resume is checked against, the schedule position and the fp16 loss-scaler state;
- ``manifest.json``: size and sha256 of every file, checked before a resume reads anything.

Nothing is unpickled: a crafted file in a run directory cannot run code. A checkpoint is written under a
hidden temporary name, fsynced, then renamed, so a crash never leaves a half-written ``checkpoint-<step>``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from qlora_kit.errors import CheckpointError, storage_error
from qlora_kit.files import fsync_tree, replace_dir
from qlora_kit.rundir.manifest import MANIFEST, verify_manifest, write_manifest
from qlora_kit.training.distributed import (
    full_optimizer_state,
    full_trainable_state,
    is_fsdp,
    load_full_state,
)
from qlora_kit.training.rng import capture as capture_rng
from qlora_kit.training.rng import restore as restore_rng
from qlora_kit.training.state import TrainerState
from qlora_kit.training.tensor_tree import join_tensors, split_tensors

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
EXTRA_FILE = "trainable_extra.safetensors"
ADAPTER_DIR = "adapter"
_NAME = re.compile(r"^checkpoint-(\d+)$")


# ------------------------------------------------------------------------------------ manager


class CheckpointManager:
    """Saves, finds, prunes and loads the checkpoints of one output directory.

    Args:
        output_dir: The run's directory.
        keep_last: Checkpoints of this run kept (older ones of this run are deleted).
        run_id: The run's identity; only checkpoints carrying it are ever pruned.
    """

    def __init__(self, output_dir: str | Path, keep_last: int, run_id: str | None = None):
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.run_id = run_id

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (state file and manifest present), oldest first."""
        if not self.output_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found) if (p / STATE_FILE).is_file() and (p / MANIFEST).is_file()]

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint ``train.resume`` points at: ``auto`` = the latest here (or none), else a path."""
        if resume is None:
            return None
        if resume == "auto":
            found = self.checkpoints()
            return found[-1] if found else None
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(f"train.resume: {path} is not a checkpoint folder (no {STATE_FILE})")
        return path

    def save(self, accelerator: Any, model: Any, optimizer: Any, state: TrainerState, extra: dict) -> Path:
        """Write ``checkpoint-<step>`` atomically (every process must call this) and prune old ones.

        Raises:
            StorageError: the disk is full or not writable; the previous checkpoints are untouched.
        """
        final = self.output_dir / f"checkpoint-{state.step}"
        tmp = self.output_dir / f".checkpoint-{state.step}.tmp"
        main = accelerator.is_main_process
        try:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-save
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            _save_rng(tmp, accelerator.process_index)
            gathered = _gather_if_sharded(accelerator, model, optimizer)  # a collective under FSDP
            accelerator.wait_for_everyone()  # every process's RNG file is in tmp before the rename
            if main:
                trainable, optim_state = gathered or (None, optimizer.state_dict())
                _save_trainable(accelerator.unwrap_model(model), tmp, trainable)
                _save_optimizer_and_state(optim_state, state, extra, tmp)
                write_manifest(tmp, step=state.step, run_id=state.run_id)
                fsync_tree(tmp)
                replace_dir(tmp, final)
                self._prune()
        except OSError as exc:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(exc, final) from exc
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Any, model: Any, optimizer: Any, path: Path) -> dict[str, Any]:
        """Restore adapter, optimizer and this process's RNG from ``path``; return its state file.

        Raises:
            CheckpointError: a file is missing, truncated or corrupt (named, with how to recover).
        """
        self.require_intact(path)
        saved = read_state_file(path)
        optim_state = join_tensors(saved["optimizer"], _read_tensors(path / OPTIMIZER_FILE))
        if is_fsdp(accelerator):  # full tensors by parameter name, sharded as they load
            load_full_state(model, optimizer, _read_tensors(path / EXTRA_FILE), optim_state)
        else:
            _load_trainable(accelerator.unwrap_model(model), path)
            optimizer.load_state_dict(optim_state)
        _load_rng(path, accelerator.process_index)
        return saved

    def require_intact(self, path: Path) -> None:
        """Check ``path`` against its manifest before anything reads it."""
        problems = verify_manifest(path)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckpointError(
                f"checkpoint {path} is damaged: {problems[0]}{more}. {self._recovery(path)}"
            )

    def _recovery(self, path: Path) -> str:
        earlier = [p for p in self.checkpoints() if _step(p) < _step(path) and not verify_manifest(p)]
        if earlier:
            return (f"Resume from the previous checkpoint instead: train.resume={earlier[-1]} "
                    f"(or delete {path.name} and use train.resume=auto)")  # fmt: skip
        return "No earlier intact checkpoint: start over (--overwrite) or restore the file."

    def clean_temporary(self) -> None:
        """Remove folders left by saves that crashed before their rename."""
        if self.output_dir.is_dir():
            for p in self.output_dir.glob(".checkpoint-*"):
                shutil.rmtree(p, ignore_errors=True)

    def _prune(self) -> None:
        ours = [p for p in self.checkpoints() if self.run_id is None or _run_id(p) == self.run_id]
        for old in ours[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def read_state_file(path: Path) -> dict[str, Any]:
    """The parsed ``trainer_state.json`` of checkpoint ``path``."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{Path(path) / STATE_FILE}: unreadable ({exc})") from None


def read_state(path: Path) -> TrainerState:
    """The :class:`TrainerState` saved in checkpoint ``path``."""
    return TrainerState.from_dict(read_state_file(path)["trainer"])


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def _run_id(path: Path) -> str | None:
    try:
        return read_state_file(path)["trainer"].get("run_id")
    except CheckpointError:
        return None


# ------------------------------------------------------------------------------ file contents


def _gather_if_sharded(accelerator: Any, model: Any, optimizer: Any) -> tuple[dict, dict] | None:
    if not is_fsdp(accelerator):
        return None
    return full_trainable_state(model), full_optimizer_state(model, optimizer)


def _save_trainable(model: Any, directory: Path, gathered: dict[str, Any] | None = None) -> None:
    """The adapter in PEFT format, plus (in ``trainable_extra.safetensors``, by parameter name) any trainable
    tensor PEFT's state dict does not hold, or, from a sharded model, every trainable tensor (``gathered``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    model.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True, state_dict=gathered)
    (directory / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # PEFT's blank card: noise here
    if gathered is not None:
        save_file(gathered, str(directory / EXTRA_FILE))
        return
    saved = {t.data_ptr() for t in get_peft_model_state_dict(model).values()}
    extra = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
             if p.requires_grad and p.data_ptr() not in saved}  # fmt: skip
    if extra:
        save_file(extra, str(directory / EXTRA_FILE))


def _load_trainable(model: Any, path: Path) -> None:
    from peft import set_peft_model_state_dict

    weights = _read_tensors(path / ADAPTER_DIR / "adapter_model.safetensors")
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the adapter: unexpected {unexpected[:3]}")
    if (path / EXTRA_FILE).is_file():
        params = dict(model.named_parameters())
        for name, value in _read_tensors(path / EXTRA_FILE).items():
            params[name].data.copy_(value)


def _save_optimizer_and_state(optim_state: dict, state: TrainerState, extra: dict, directory: Path) -> None:
    from safetensors.torch import save_file

    tree, tensors = split_tensors(optim_state, "optimizer")
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    document = {"trainer": state.to_dict(), "optimizer": tree, **extra}
    (directory / STATE_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")


def _save_rng(directory: Path, rank: int) -> None:
    from safetensors.torch import save_file

    tensors, values = capture_rng()
    save_file(tensors, str(directory / f"rng-{rank}.safetensors"), metadata={"values": json.dumps(values)})


def _load_rng(path: Path, rank: int) -> None:
    from safetensors import safe_open

    file = path / f"rng-{rank}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (was the checkpoint written by as many processes?)")
    with safe_open(str(file), framework="pt") as handle:
        values = json.loads(handle.metadata()["values"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    restore_rng(tensors, values)


def _read_tensors(file: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors' own error type is not importable under a stable name
        raise CheckpointError(f"{file}: unreadable ({exc})") from None
