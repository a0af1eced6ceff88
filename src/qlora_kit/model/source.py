"""Where a base model came from, recorded so that someone elsewhere can get the same base.

``ModelLoader`` loads from a hub id, a local directory or a `.gguf` file; a GGUF file is dequantized into
a local cache directory first (:mod:`qlora_kit.model.gguf`), and that cache path is what transformers and
PEFT then remember as the model's ``name_or_path``. :func:`describe_source` records the original instead.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

from qlora_kit.model.gguf import gguf_origin_metadata

# A directory inside the Hugging Face cache: .../models--org--name/snapshots/<commit>
_HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<repo>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/?$")


def describe_source(model_cfg: Any) -> dict[str, Any]:
    """What a user elsewhere needs to get the base model the run loaded (``model_cfg``: the `model` section).

    Returns one of:

    - ``{"kind": "hub", "repo_id", "revision", "commit"}``: ``commit`` when the files are in the local
      hub cache (else None);
    - ``{"kind": "local_dir", "path"}``: the absolute path, plus ``repo_id``/``commit`` when the directory
      is a snapshot inside the Hugging Face cache;
    - ``{"kind": "gguf", "path", "file", "sha256", "size", "file_type", "metadata", "repo_id"}``: the
      absolute path of the `.gguf` file, its SHA-256 and size in bytes, its quantization type (e.g.
      ``Q4_1``), the metadata naming its origin, and the hub repository it says it was converted from
      (None when it does not say).

    Every kind also has ``name_or_path`` (as configured) and ``tokenizer`` (`model.tokenizer`, or None).
    """
    name = model_cfg.name_or_path
    path = Path(name).expanduser()
    common = {"name_or_path": name, "tokenizer": model_cfg.tokenizer}
    if name.endswith(".gguf"):
        return {"kind": "gguf", **_describe_gguf(path.resolve(), model_cfg.cache_dir), **common}
    if path.is_dir():
        described = {"kind": "local_dir", "path": str(path.resolve())}
        match = _HF_CACHE_SNAPSHOT.search(path.resolve().as_posix())
        if match:
            described.update(repo_id=match["repo"].replace("--", "/", 1), commit=match["commit"])
        return {**described, **common}
    commit = _cached_commit(name, model_cfg.revision, model_cfg.cache_dir)
    return {"kind": "hub", "repo_id": name, "revision": model_cfg.revision, "commit": commit, **common}


def portable_base_name(source: dict[str, Any]) -> str:
    """The name to put in ``adapter_config.json``'s ``base_model_name_or_path``: the hub id when one is
    known (a hub source, a hub-cache snapshot, or a GGUF file naming its hub repository), else the
    absolute path of the original directory or `.gguf` file (never qlora_kit's conversion cache)."""
    return source.get("repo_id") or source["path"]


def describe_source_text(source: dict[str, Any]) -> str:
    """One line naming the source, for a model card."""
    if source["kind"] == "hub":
        revision = source.get("commit") or source.get("revision")
        return f"Hugging Face hub `{source['repo_id']}`" + (f" at revision `{revision}`" if revision else "")
    if source["kind"] == "local_dir":
        extra = (
            f" (hub snapshot of `{source['repo_id']}` at `{source['commit']}`)"
            if source.get("repo_id")
            else ""
        )
        return f"local directory `{source['path']}`{extra}"
    kind = f"{source['file_type']} " if source.get("file_type") else ""
    text = f"{kind}GGUF file `{source['path']}` ({source['size']:,} bytes, sha256 `{source['sha256']}`)"
    return text + (f", converted from `{source['repo_id']}`" if source.get("repo_id") else "")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; cached per (path, size, mtime), since an export may ask
    for the same multi-GB file more than once."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_gguf(path: Path, cache_dir: str | None) -> dict[str, Any]:
    described: dict[str, Any] = {"path": str(path), "file": path.name}
    if not path.is_file():  # e.g. `qlora-kit export` of a run whose GGUF file has moved since
        return {**described, "sha256": None, "size": None, "file_type": None, "metadata": {}, "repo_id": None}
    metadata = dict(gguf_origin_metadata(path, cache_dir))
    return {
        **described,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "file_type": metadata.pop("file_type", None),
        "metadata": metadata,
        "repo_id": _hub_repo(metadata),
    }


def _hub_repo(metadata: dict[str, Any]) -> str | None:
    """The hub repository a GGUF file says it was converted from, when it says so."""
    repo = metadata.get("source.huggingface.repository")
    if repo:
        return str(repo)
    for key in ("source.url", "base_model.0.repo_url"):
        match = re.match(r"https://huggingface\.co/([^/]+/[^/]+?)/?$", str(metadata.get(key) or ""))
        if match:
            return match[1]
    return None


def _cached_commit(repo_id: str, revision: str | None, cache_dir: str | None) -> str | None:
    """The commit of ``repo_id`` at ``revision`` in the local hub cache (what was loaded), if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    except Exception:  # an invalid repo id or revision: nothing to record
        return None
    match = re.search(r"/snapshots/([0-9a-f]{40})/", str(found)) if isinstance(found, str) else None
    return match[1] if match else None
