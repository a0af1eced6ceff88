"""Checks of a model against the run, made before the weights are read (the attention kernel, the
position limit) or right after (non-finite weights), so a mismatch is one line naming the field
instead of an IndexError or a NaN loss mid-training."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qlora_kit.errors import ConfigError, ModelLoadError

# Config attributes holding the length of a learned position table, most specific first.
_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")
_FLASH_PACKAGES = {
    "flash_attention_2": ("flash_attn", "pip install flash-attn --no-build-isolation"),
    "flash_attention_3": (
        "flash_attn_interface",
        "build FlashAttention 3 from https://github.com/Dao-AILab/flash-attention (hopper/)",
    ),
}
_CHUNK = 1 << 24  # elements checked at a time: bounds the temporary mask of a large embedding


def position_limit(config: Any, trust_remote_code: bool = False) -> tuple[int, str] | None:
    """The longest sequence a model can take, and the config field saying so, or None.

    Only models with a learned table of absolute positions (GPT-2, GPT-Neo, OPT, ...) have a hard
    limit: a longer input indexes past the table. Rotary (Llama, Qwen, ...) and ALiBi models run past
    their `max_position_embeddings` (with degrading quality), so they are not limited here. The table
    is found on an empty (meta) model built from ``config``: an embedding named for positions.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    tables = [
        (name, m)
        for name, m in skeleton.named_modules()
        if isinstance(m, nn.Embedding) and _names_positions(name.rsplit(".", 1)[-1])
    ]
    if not tables:
        return None
    for field in _POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value, field
    name, table = tables[0]
    return table.num_embeddings, f"{name}.num_embeddings"


def _names_positions(name: str) -> bool:
    # GPT-2/GPT-Neo `wpe`, OPT/BioGPT `embed_positions`, others `position_embeddings`, `pos_emb`
    return name == "wpe" or "position" in name or "pos_emb" in name


def check_max_length(config: Any, max_length: int, source: str, trust_remote_code: bool = False) -> None:
    """Refuse a `data.max_length` beyond the positions a model can embed.

    Raises:
        ConfigError: at ``data.max_length``, naming the limit and where it comes from.
    """
    limit = position_limit(config, trust_remote_code)
    if limit is not None and max_length > limit[0]:
        raise ConfigError(
            [
                (
                    "data.max_length",
                    f"{max_length} is more than the {limit[0]} positions model {source} can embed "
                    f"({limit[1]} in its config.json); use data.max_length <= {limit[0]}",
                )
            ]
        )


def check_attn_implementation(name: str | None, device: torch.device, compute_dtype: str) -> None:
    """Check that `model.attn_implementation` can run here, before any weight is loaded.

    Raises:
        ModelLoadError: a FlashAttention kernel off CUDA, without its package, or in float32.
    """
    if name == "sdpa_varlen" and device.type != "cuda":
        raise ModelLoadError(
            f"model.attn_implementation=sdpa_varlen needs a CUDA GPU, and this model goes to {device}; use `sdpa`"
        )
    if name == "sdpa_varlen" and compute_dtype not in ("float16", "bfloat16"):
        raise ModelLoadError(
            f"model.attn_implementation=sdpa_varlen runs in float16 or bfloat16 only, and the compute dtype is "
            f"{compute_dtype}; set quant.compute_dtype=bfloat16 or use `sdpa`"
        )
    if name not in _FLASH_PACKAGES:
        return
    package, install = _FLASH_PACKAGES[name]
    field = f"model.attn_implementation={name}"
    if device.type != "cuda":
        raise ModelLoadError(f"{field} needs a CUDA GPU, and this model goes to {device}; use `sdpa`")
    if importlib.util.find_spec(package) is None:
        raise ModelLoadError(f"{field}: the {package} package is not installed ({install}), or use `sdpa`")
    if compute_dtype not in ("float16", "bfloat16"):
        raise ModelLoadError(
            f"{field} runs in float16 or bfloat16 only, and the compute dtype is {compute_dtype}; "
            "set it to bfloat16 or use `sdpa`"
        )


def validate_checkpoint_dir(path: Path) -> None:
    """Check a local model directory before transformers reads it: a config, and every safetensors
    file's header and size (a truncated or corrupt file is named here, not deep in a stack trace).

    Raises:
        ModelLoadError: naming the directory or the damaged file.
    """
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model.name_or_path: {path} has no config.json (not a model directory)")
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # SafetensorError is not exported under a stable name
            raise ModelLoadError(f"model.name_or_path: {file} is corrupt or truncated ({exc})") from exc


def check_finite_weights(model: nn.Module, source: str | Path) -> None:
    """One pass over the loaded base weights: NaN or inf there means the file is corrupt.

    Quantized weights are checked through their scales (a NaN or inf weight makes its block's absmax
    NaN or inf); the 4-bit codes themselves cannot be non-finite.

    Raises:
        ModelLoadError: naming the tensor and the safetensors file holding it.
    """
    for name, param in model.named_parameters():
        if not all(_finite(t) for t in _stored_tensors(param)):
            where = _file_of(Path(source), name)
            raise ModelLoadError(
                f"model.name_or_path: {where}: tensor {name!r} holds NaN or infinite values (the file is "
                "corrupt); download or convert the model again"
            )


def _stored_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    state = getattr(param, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        nested = getattr(state, "state2", None)
        tensors = [state.absmax, getattr(state, "offset", None)]
        tensors += [nested.absmax] if nested is not None else []
        return [t for t in tensors if isinstance(t, torch.Tensor)]
    scales = getattr(param, "SCB", None)  # bitsandbytes Int8Params
    if isinstance(scales, torch.Tensor):
        return [scales]
    return [param.detach()]


def _finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return True
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(chunk).all()) for chunk in flat.split(_CHUNK))


def _file_of(source: Path, name: str) -> str:
    """The safetensors file of ``source`` holding tensor ``name`` (else the directory itself)."""
    from safetensors import safe_open

    if source.is_dir():
        for file in sorted(source.glob("*.safetensors")):
            with safe_open(file, framework="pt") as handle:
                names = handle.keys()  # a safe_open handle has no `in`
            if name in names:
                return str(file)
    return str(source)
