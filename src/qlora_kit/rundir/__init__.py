"""The run directory: one run per ``output_dir``, checked before anything is loaded or written.

:func:`open_run_dir` makes sure the directory can hold this run (creatable, writable, not a file),
takes its lock (:class:`~qlora_kit.rundir.lock.RunLock`), and decides between a fresh start, a resume
of the run already there (same config, up to :data:`~qlora_kit.config.resume.RESUMABLE_CHANGES`), and a
refusal: a new run never deletes or adopts another run's files unless told to overwrite them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qlora_kit.config.io import RUN_CONFIG_FILE
from qlora_kit.errors import OutputDirError
from qlora_kit.rundir.lock import RunLock
from qlora_kit.rundir.manifest import LOCK_FILE, MANIFEST, verify_manifest, write_manifest

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "MANIFEST", "RunDir", "RunLock", "open_run_dir", "verify_manifest", "write_manifest"]

_ARTIFACT = re.compile(
    r"^(run_config\.yaml|versions\.json|summary\.json|manifest\.json|metrics\.jsonl|generations\.jsonl|"
    r"loss_curve\.png|data_report\.(json|txt)|data_lengths\.png|train\.log|checkpoint-\d+|adapter|merged|gguf|"
    r"\.checkpoint-\d+\.tmp)$"
)


@dataclass
class RunDir:
    """An output directory this process holds the lock of (a context manager releasing it).

    Attributes:
        path: The directory.
        lock: Its lock (None on the processes of a distributed launch other than the main one).
        resuming: The directory holds this run already and ``train.resume`` asks to continue it.
        main: This is the process that writes the run's files.
    """

    path: Path
    lock: RunLock | None
    resuming: bool
    main: bool = True

    def finish(self, cfg: Any) -> None:
        """Write the directory's manifest: every file with its sha256, the config's hash, the versions."""
        import hashlib

        from qlora_kit.config.io import config_to_yaml, package_versions

        if self.main:
            config_hash = hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()
            write_manifest(self.path, config_sha256=config_hash, versions=package_versions())

    def close(self) -> None:
        """Release the lock."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_artifacts(path: Path) -> list[Path]:
    """The files and folders of a qlora_kit run in ``path`` (anything else there is the user's)."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if _ARTIFACT.match(p.name))


def check_writable(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written there.

    Raises:
        OutputDirError: ``path`` is a file, or cannot be created or written (permissions, read-only).
    """
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output_dir {path} is a file, not a directory; choose another output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else exc.strerror
        raise OutputDirError(
            f"output_dir {path}: cannot write there ({reason}); choose another output_dir"
        ) from None


def open_run_dir(cfg: Any, *, overwrite: bool = False) -> RunDir:
    """Check, lock and classify ``cfg.output_dir`` for a run of ``cfg``.

    Under a distributed launch the main process checks and locks, and the others stop with its error.

    Args:
        cfg: The :class:`~qlora_kit.config.RunConfig` about to run.
        overwrite: Delete the run artifacts already in the directory (never other files).

    Raises:
        OutputDirError: the directory is unusable, locked by a live run, or holds another run.
        ConfigError: ``train.resume`` asks to continue a run whose config differs in a fixed field.
    """
    import torch
    from accelerate import PartialState

    # cpu=True where there is no GPU: under torchrun that makes accelerate join the processes over gloo
    path, state = Path(cfg.output_dir), PartialState(cpu=not torch.cuda.is_available())
    run_dir, error = None, None
    if state.is_main_process:
        try:
            run_dir = _open_main(path, cfg, overwrite)
        except Exception as exc:
            error = exc
    _share_error(state, error)
    if run_dir is None:
        resuming = cfg.train.resume is not None and (path / RUN_CONFIG_FILE).is_file()
        run_dir = RunDir(path, None, resuming, main=False)
    return run_dir


def _open_main(path: Path, cfg: Any, overwrite: bool) -> RunDir:
    check_writable(path)
    lock = RunLock(path).acquire()
    try:
        return RunDir(path, lock, _classify(path, cfg, overwrite))
    except BaseException:
        lock.release()
        raise


def _share_error(state: Any, error: Exception | None) -> None:
    """Raise the main process's error on every process (the others would wait for it forever)."""
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = [str(error) if error is not None else None]
        broadcast_object_list(message)
        if message[0] is not None and error is None:
            raise OutputDirError(message[0])
    if error is not None:
        raise error


def _classify(path: Path, cfg: Any, overwrite: bool) -> bool:
    """True to resume the run in ``path``; False for a fresh start (after clearing, if allowed)."""
    artifacts = run_artifacts(path)
    started = any(p.name == RUN_CONFIG_FILE or p.name.startswith("checkpoint-") for p in artifacts)
    if not started:  # nothing, or the reports of a run that stopped before it trained: start over
        return False
    if overwrite:
        if cfg.train.resume is not None:
            raise OutputDirError("--overwrite and train.resume contradict each other: give one")
        for item in artifacts:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        logger.info("overwrite: removed %d run files from %s", len(artifacts), path)
        return False
    saved = path / RUN_CONFIG_FILE
    if cfg.train.resume is not None and saved.is_file():
        _check_same_run(saved, cfg)
        return True
    raise OutputDirError(
        f"output_dir {path} already holds a run ({_summary(artifacts)}). Resume it with train.resume=auto, "
        "choose another output_dir, or pass --overwrite (qlora-kit train ... --overwrite) to replace it"
    )


def _check_same_run(saved: Path, cfg: Any) -> None:
    from qlora_kit.config.resume import config_differences
    from qlora_kit.errors import ConfigError

    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise OutputDirError(
            f"{saved}: unreadable ({exc}); cannot tell which run the directory holds"
        ) from None
    conflicts, _ = config_differences(old, cfg.model_dump(mode="json"))
    if conflicts:
        raise ConfigError(
            [
                (
                    "train.resume",
                    f"the run in {saved.parent} was made with another config: "
                    + "; ".join(conflicts)
                    + ". Only the fields listed in docs/components/trainer.md may change on resume; start a new "
                    "output_dir instead",
                )
            ]  # fmt: skip
        )


def _summary(artifacts: list[Path]) -> str:
    steps = sorted(int(p.name.split("-")[1]) for p in artifacts if p.name.startswith("checkpoint-"))
    parts = [p.name for p in artifacts if not p.name.startswith(("checkpoint-", "."))][:4]
    if steps:
        parts.insert(0, f"{len(steps)} checkpoint(s) up to step {steps[-1]}")
    return ", ".join(parts)
