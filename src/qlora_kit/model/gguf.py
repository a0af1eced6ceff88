"""GGUF sources: dequantize a `.gguf` file once into a cached safetensors directory.

bitsandbytes quantizes from full-precision weights, so a GGUF model (itself quantized, e.g. Q4_1) is
first dequantized through transformers' GGUF loader, then saved as an ordinary model directory with
its tokenizer. Later loads reuse that directory; it is then loaded (and quantized) like any other.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qlora_kit.errors import ModelLoadError, StorageError, storage_error
from qlora_kit.files import atomic_write_json

# What a cache entry keeps about the file it came from, so a later run need not read the GGUF header
# again (gguf's reader parses every field, the tokenizer's vocabulary included: ~4 s for SmolLM2-135M).
ORIGIN_FILE = "gguf_origin.json"
# GGUF metadata keys that name what the file was converted from (llama.cpp's converter writes them).
_GGUF_ORIGIN_KEYS = (
    "general.name",
    "general.organization",
    "general.basename",
    "general.finetune",
    "general.size_label",
    "general.license",
    "general.source.url",
    "general.source.huggingface.repository",
    "general.base_model.0.repo_url",
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qlora_kit`` (``~/.cache/qlora_kit`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qlora_kit"


def validate_gguf(path: Path) -> Any:
    """Read the GGUF header and tensor table of ``path`` (memory-mapped, no tensor data is decoded).

    Returns:
        The ``gguf.GGUFReader`` of the file.

    Raises:
        ModelLoadError: the file is missing, is not GGUF, or is truncated.
    """
    if not path.is_file():
        raise ModelLoadError(f"model.name_or_path: GGUF file not found: {path}")
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/IndexError/... on any damage
        raise ModelLoadError(
            f"model.name_or_path: {path} is not a readable GGUF file (corrupt or truncated: {exc})"
        ) from exc
    if not reader.tensors:
        raise ModelLoadError(f"model.name_or_path: GGUF file {path} holds no tensors")
    return reader


def cache_key(path: Path) -> str:
    """Cache entry name of ``path``: its stem, size and modification time (a changed file converts again)."""
    stat = path.stat()
    return f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def cache_entry(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`dequantize_gguf` keeps (or will keep) the conversion of ``path``."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / "gguf" / cache_key(Path(path).expanduser().resolve())


def gguf_origin_metadata(path: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The GGUF metadata naming where the file came from (name, organization, source repository, ...)
    and its quantization type as ``file_type`` (``Q4_1``, ``F16``, ...). Unreadable files give ``{}``.

    Read from the file's cache entry when it has been converted (under ``cache_dir``), else from the file.
    """
    try:
        entry = cache_entry(path, cache_dir)
        if (entry / ORIGIN_FILE).is_file():
            return json.loads((entry / ORIGIN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a missing file or an unreadable entry: read the file itself
        return _read_origin_metadata(path)
    found = _read_origin_metadata(path)
    if (entry / "config.json").is_file():  # an entry converted before this file existed: add it once
        with contextlib.suppress(OSError, StorageError):
            atomic_write_json(entry / ORIGIN_FILE, found)
    return found


def _read_origin_metadata(path: str | Path) -> dict[str, Any]:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception:  # a damaged file is ModelLoader's to report; here it only lacks a description
        return {}
    return _origin_of(reader)


def _origin_of(reader: Any) -> dict[str, Any]:
    """The origin keys and ``file_type`` a ``GGUFReader`` holds, as plain JSON values."""
    import gguf

    found = {}
    for key in (*_GGUF_ORIGIN_KEYS, "general.file_type"):
        field = reader.get_field(key)
        if field is not None:
            value = field.contents()
            plain = isinstance(value, (str, int, float, bool)) or value is None
            found[key.removeprefix("general.")] = value if plain else str(value)  # stored as JSON
    if "file_type" in found:
        try:
            found["file_type"] = gguf.LlamaFileType(found["file_type"]).name.removeprefix("MOSTLY_")
        except ValueError:
            found["file_type"] = str(found["file_type"])
    return found


def dequantize_gguf(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The safetensors directory holding the dequantized model and tokenizer of GGUF file ``path``.

    Converts on the first call (float32, so the dequantized values are kept exactly) and reuses the
    result afterwards. The directory is written under a temporary name and renamed into place, so
    an interrupted conversion never leaves a half-written cache entry behind.

    Args:
        path: the `.gguf` file.
        cache_dir: cache root (default :func:`default_cache_dir`); entries live in ``<root>/gguf``.

    Raises:
        ModelLoadError: the file is missing, corrupt, or its architecture is not supported by
            transformers' GGUF loader.
        StorageError: the cache cannot be written (names the cache entry).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"model.name_or_path: GGUF file not found: {path}")
    target = cache_entry(path, cache_dir)
    if (target / "config.json").is_file():  # converted, so read and validated, at this size and mtime
        return target
    origin = _origin_of(validate_gguf(path))  # one parse of the header, kept in the entry
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        _convert(path, tmp)
        atomic_write_json(tmp / ORIGIN_FILE, origin)
        try:
            tmp.rename(target)
        except OSError:  # another process converted the same file meanwhile: keep theirs
            if not (target / "config.json").is_file():
                raise
    except OSError as exc:  # reading errors became ModelLoadError in _convert: this is the cache
        raise storage_error(exc, target, "caching the dequantized GGUF model (model.cache_dir) in") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ModelLoadError(f"model.name_or_path: cannot dequantize GGUF file {path}: {exc}") from exc
    # The loaded model is marked as GGUF-quantized (config.quantization_config, quantizer hooks), which
    # would make bitsandbytes refuse it later: a fresh model from the config without that marker, given
    # the dequantized weights, saves as an ordinary checkpoint.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
