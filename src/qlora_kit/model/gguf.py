"""GGUF sources: dequantize a `.gguf` file once into a cached safetensors directory.

bitsandbytes quantizes from full-precision weights, so a GGUF model (itself quantized, e.g. Q4_1) is
first dequantized through transformers' GGUF loader, then saved as an ordinary model directory with
its tokenizer. Later loads reuse that directory; it is then loaded (and quantized) like any other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qlora_kit.errors import ModelLoadError, storage_error


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qlora_kit`` (``~/.cache/qlora_kit`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qlora_kit"


def validate_gguf(path: Path) -> None:
    """Read the GGUF header and tensor table of ``path`` (memory-mapped, no tensor data is decoded).

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


def cache_key(path: Path) -> str:
    """Cache entry name of ``path``: its stem, size and modification time (a changed file converts again)."""
    stat = path.stat()
    return f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


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
    validate_gguf(path)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / "gguf" / cache_key(path)
    if (target / "config.json").is_file():
        return target
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        _convert(path, tmp)
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
