"""Manifests: every file of a directory with its size and sha256, plus what made it.

Each checkpoint, each export directory (``adapter/``, ``merged/``) and the run directory itself carry
a ``manifest.json``; :func:`verify_manifest` finds files that are missing, truncated or changed since,
so a damaged file is named before anything tries to load it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from qlora_kit.files import atomic_write_json

MANIFEST = "manifest.json"
LOCK_FILE = ".qlora_kit.lock"
LOG_FILE = "train.log"  # a log grows (a resumed or failed later attempt appends): never listed
_SKIP = {MANIFEST, LOCK_FILE, LOG_FILE}
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def listed_files(root: Path) -> list[Path]:
    """Files under ``root`` a manifest covers: all but the manifest itself, the lock and hidden
    temporaries (``.name.tmp``, ``.checkpoint-N.tmp``)."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() not in _SKIP and not any(p.startswith(".") for p in rel.parts):
            found.append(path)
    return found


def build_manifest(root: str | Path, **about: Any) -> dict[str, Any]:
    """The manifest of ``root``: ``files`` (relative path -> size, sha256), creation time and ``about``
    (e.g. the config hash and package versions)."""
    from qlora_kit import __version__

    root = Path(root)
    files = {
        path.relative_to(root).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in listed_files(root)
    }
    return {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "qlora_kit": __version__,
        **about,
        "files": files,
    }


def write_manifest(root: str | Path, **about: Any) -> Path:
    """Write ``root/manifest.json`` (atomically) for the files now under ``root``."""
    return atomic_write_json(Path(root) / MANIFEST, build_manifest(root, **about))


def verify_manifest(root: str | Path, *, strict: bool = False) -> list[str]:
    """Problems found checking ``root`` against its manifest (empty when intact).

    Each problem names the file: missing, size changed (truncated), content changed. With ``strict``,
    files added since the manifest was written are problems too.
    """
    import json

    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        return [f"{path}: no manifest (written by qlora_kit when the directory was complete)"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        return [f"{path}: unreadable manifest ({exc})"]
    problems = []
    for rel, meta in files.items():
        target = root / rel
        if not target.is_file():
            problems.append(f"{target}: missing")
        elif target.stat().st_size != meta["size"]:
            size = target.stat().st_size
            problems.append(
                f"{target}: {size} bytes, the manifest says {meta['size']} (truncated or replaced)"
            )
        elif file_sha256(target) != meta["sha256"]:
            problems.append(
                f"{target}: content differs from the manifest (sha256 mismatch: corrupt or edited)"
            )
    if strict:
        extra = {p.relative_to(root).as_posix() for p in listed_files(root)} - set(files)
        problems += [f"{root / rel}: not in the manifest (added later)" for rel in sorted(extra)]
    return problems
