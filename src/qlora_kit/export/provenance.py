"""What an exported directory needs to stand on its own: the original base model, the quantization the
adapter was trained on, and the exact code that loads the model that was trained.

An adapter trained on an NF4-quantized base, loaded onto the same base in bf16, is a different model: the
adapter learned to correct the NF4 rounding. So an adapter directory carries the ``BitsAndBytesConfig``
it was trained under (``quantization_config.json``), and its README's load code applies it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qlora_kit.files import atomic_write_json

PROVENANCE_FILE = "qlora_kit.json"
QUANT_CONFIG_FILE = "quantization_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
_BNB_4BIT_FIELDS = (
    "load_in_4bit",
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_quant_storage",
    "llm_int8_skip_modules",
)
_BNB_8BIT_FIELDS = ("load_in_8bit", "llm_int8_threshold", "llm_int8_skip_modules")


def quantization_settings(quant_cfg: Any, model: Any = None) -> dict[str, Any] | None:
    """The ``transformers.BitsAndBytesConfig`` keyword arguments the base was loaded with, as JSON values
    (``BitsAndBytesConfig(**settings)`` rebuilds it); None when the base was not quantized by bitsandbytes.

    Read from ``model``'s own quantization config when given: that is what the loader really used (the
    `quant` kind's settings, with `quant.skip_modules` resolved into the full list, output head included).
    Without a model (an export written before ``qlora_kit.json`` existed) they are derived from the
    built-in `quant` kinds' fields.
    """
    loaded = _loaded_quantization_config(model)
    if loaded is not None and hasattr(loaded, "to_dict"):
        values = loaded.to_dict()
        if values.get("load_in_4bit") or values.get("load_in_8bit"):
            names = _BNB_4BIT_FIELDS if values.get("load_in_4bit") else _BNB_8BIT_FIELDS
            return {name: values.get(name) for name in names}
        return None
    if model is not None:  # loaded without bitsandbytes
        return None
    from qlora_kit.model.compute_dtype import resolve_compute_dtype

    skip = list(getattr(quant_cfg, "skip_modules", None) or []) or None
    if quant_cfg.kind == "bnb_4bit":
        return dict(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_cfg.quant_type,
            bnb_4bit_use_double_quant=quant_cfg.double_quant,
            bnb_4bit_compute_dtype=resolve_compute_dtype(quant_cfg.compute_dtype),
            bnb_4bit_quant_storage=quant_cfg.quant_storage,
            llm_int8_skip_modules=skip,
        )
    if quant_cfg.kind == "bnb_8bit":
        return dict(load_in_8bit=True, llm_int8_threshold=quant_cfg.threshold, llm_int8_skip_modules=skip)
    return None


def _loaded_quantization_config(model: Any) -> Any:
    if model is None:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "quantization_config", None)


def provenance(kind: str, run_cfg: Any, source: dict[str, Any], model: Any = None) -> dict[str, Any]:
    """The contents of ``qlora_kit.json`` for an export of ``kind`` (``adapter``, ``merged``, ``gguf``)."""
    from qlora_kit.config.io import package_versions
    from qlora_kit.model.compute_dtype import resolve_compute_dtype

    quant = quantization_settings(run_cfg.quant, model)
    dtype = resolve_compute_dtype(run_cfg.quant.compute_dtype)  # a run's config has it resolved already
    record: dict[str, Any] = {
        "format": 1,
        "kind": kind,
        "base_model": source,
        "trained_on": {
            "quant_kind": run_cfg.quant.kind,
            "compute_dtype": dtype,
            "bitsandbytes_config": quant,
        },
        "pad_token_policy": run_cfg.model.pad_token,
        "versions": package_versions(),
    }
    if kind == "adapter" and quant is not None:
        record["load_as_trained"] = (
            f"load the base with BitsAndBytesConfig(**{QUANT_CONFIG_FILE}) and dtype "
            f"{dtype}, then PeftModel.from_pretrained (README.md has the code); a "
            "16-bit base gives a different model"
        )
    return record


def record_provenance(
    directory: str | Path, kind: str, run_cfg: Any, *, model: Any = None, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``qlora_kit.json`` into an export ``directory``; for an adapter also ``quantization_config.json``
    (when the base was quantized), and point ``adapter_config.json``'s ``base_model_name_or_path`` at the
    original base (the hub id when known, else the original path) instead of qlora_kit's GGUF cache.

    Call it inside the ``atomic_dir`` the export is written in, after PEFT's ``save_pretrained``. (A `.gguf`
    path there is no base ``AutoPeftModelForCausalLM`` can load, but the cache dir it replaces exists on
    this machine only; the README's load code handles both.)

    Args:
        directory: The export directory (adapter, merged or gguf).
        kind: ``adapter``, ``merged`` or ``gguf``.
        run_cfg: The run's RunConfig.
        model: The trained model, to read the resolved bitsandbytes config from (optional).
        source: A :func:`~qlora_kit.model.source.describe_source` result (computed when None).

    Returns:
        The ``qlora_kit.json`` contents.
    """
    from qlora_kit.model.source import describe_source, portable_base_name

    directory = Path(directory)
    source = source if source is not None else describe_source(run_cfg.model)
    record = provenance(kind, run_cfg, source, model)
    atomic_write_json(directory / PROVENANCE_FILE, record)
    if kind == "adapter":
        quant = record["trained_on"]["bitsandbytes_config"]
        if quant is not None:
            atomic_write_json(directory / QUANT_CONFIG_FILE, quant)
        adapter_config = directory / ADAPTER_CONFIG_FILE
        if adapter_config.is_file():
            data = json.loads(adapter_config.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = portable_base_name(source)
            atomic_write_json(adapter_config, data)
    return record


def read_provenance(directory: str | Path) -> dict[str, Any] | None:
    """``qlora_kit.json`` of an export directory, or None when it has none (an export made before it existed)."""
    path = Path(directory) / PROVENANCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
