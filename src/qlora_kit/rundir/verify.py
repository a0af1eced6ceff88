"""``qlora-kit verify DIR``: is a run, export or checkpoint directory intact, and does its model load?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_kit.rundir.manifest import MANIFEST, verify_manifest

_EXPORTS = ("adapter", "merged")


@dataclass
class VerifyReport:
    """What :func:`verify_directory` checked, one line each, and whether everything passed."""

    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def fail(self, line: str) -> None:
        """Record a failed check."""
        self.lines.append(f"FAIL  {line}")
        self.ok = False

    def pass_(self, line: str) -> None:
        """Record a passed check."""
        self.lines.append(f"ok    {line}")

    def to_text(self) -> str:
        """The checks, then the verdict."""
        return "\n".join([*self.lines, "verified" if self.ok else "NOT intact: see FAIL lines above"])


def verify_directory(
    path: str | Path, *, load: bool = True, allow_code: bool = False, device: str | None = None
) -> VerifyReport:
    """Check ``path`` (a run's output dir, an ``adapter/`` or ``merged/`` dir, or a checkpoint) against its
    manifest(s), and with ``load`` that each export in it loads and gives finite logits."""
    path, report = Path(path), VerifyReport()
    exports = (*_EXPORTS, "gguf")  # a GGUF file is checked against its manifest, not loaded
    manifests = [path] + [path / name for name in exports if (path / name / MANIFEST).is_file()]
    if not (path / MANIFEST).is_file():
        manifests = manifests[1:]
        report.fail(f"{path}: no {MANIFEST} (the run did not finish, or was made before manifests existed)")
    for directory in manifests:
        problems = verify_manifest(directory)
        for problem in problems:
            report.fail(problem)
        if not problems:
            report.pass_(f"{directory / MANIFEST}: every file present with its size and sha256")
    if load:
        for kind in _exports(path):
            _check_loads(path, kind, report, allow_code, device)
    return report


def _exports(path: Path) -> list[str]:
    if (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return [""]  # an export directory itself
    return [kind for kind in _EXPORTS if (path / kind).is_dir()]


def _check_loads(path: Path, kind: str, report: VerifyReport, allow_code: bool, device: str | None) -> None:
    import torch

    from qlora_kit.errors import QloraKitError
    from qlora_kit.generation import load_exported

    target = path / kind if kind else path
    try:
        loaded = load_exported(target, device=device, allow_code=allow_code)
        ids = loaded.tokenizer("Hello, world", return_tensors="pt")["input_ids"].to(_device_of(loaded.model))
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits
    except (QloraKitError, OSError, ValueError, RuntimeError) as exc:
        report.fail(f"{target}: does not load: {exc}")
        return
    if not torch.isfinite(logits).all():
        report.fail(f"{target}: loads, but its logits are not finite")
    else:
        report.pass_(f"{target}: loads ({loaded.kind}) and gives finite logits")


def _device_of(model: Any) -> Any:
    return next(model.parameters()).device
