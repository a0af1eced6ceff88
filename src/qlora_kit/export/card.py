"""Model cards: the ``README.md`` of an exported adapter, merged model or GGUF file.

A card says what the model is (base model and where to get it, the quantization it was trained on),
what it was trained on (data, prompt format, hyper-parameters, final losses), how well a merge or GGUF
conversion reproduces it, the exact code that loads it, and the package versions and full run config.
Missing pieces (an export of an old run) are left out with a note, never guessed.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from qlora_kit.export.card_data import config_for_card, run_summaries
from qlora_kit.export.card_sections import (
    base_section,
    config_value,
    data_section,
    front_matter,
    gguf_section,
    intro,
    load_notes,
    merge_section,
    training_section,
    versions_section,
)
from qlora_kit.export.load_code import load_snippet
from qlora_kit.files import atomic_write_text

README_FILE = "README.md"


def model_card(
    kind: str,
    run_cfg: Any,
    *,
    source: dict[str, Any],
    data_summary: dict[str, Any] | None = None,
    train_summary: dict[str, Any] | None = None,
    merge_report: dict[str, Any] | None = None,
    versions: dict[str, str] | None = None,
    quantization: dict[str, Any] | None = None,
    path: str | Path = ".",
    gguf_report: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> str:
    """The ``README.md`` text of an export.

    Args:
        kind: ``adapter``, ``merged`` or ``gguf``.
        run_cfg: The run's RunConfig.
        source: :func:`~qlora_kit.model.source.describe_source` of the base model.
        data_summary: :func:`~qlora_kit.export.card_data.data_summary` (None: section says unknown).
        train_summary: :func:`~qlora_kit.export.card_data.train_summary` (None: section says unknown).
        merge_report: ``merge_report.json``'s contents, when a merge was made (shown for merged, and for
            an adapter as its 16-bit alternative).
        versions: Package versions (``versions.json``).
        quantization: ``BitsAndBytesConfig`` keyword arguments the adapter was trained under (None:
            built from `quant`).
        path: Where the export lives (for the load code): the directory, or the `.gguf` file.
        gguf_report: :func:`~qlora_kit.export.gguf_verify.verify_gguf`'s report (kind gguf).
        tokenizer: The run's tokenizer, to render a `chat_template` formatter's prompt format.
    """
    from qlora_kit.export.provenance import quantization_settings

    config = config_for_card(run_cfg)
    if quantization is None:
        quantization = quantization_settings(run_cfg.quant)
    sections = [
        front_matter(kind, source),
        intro(kind, config, source, quantization, merge_report),
        base_section(source, config, quantization),
        data_section(config, data_summary, run_cfg, tokenizer),
        training_section(config, train_summary),
    ]
    if merge_report is not None:
        sections.append(merge_section(merge_report, kind))
    if gguf_report is not None:
        sections.append(gguf_section(gguf_report))
    dtype = _export_dtype(kind, config, gguf_report)
    code = load_snippet(kind, path, source=source, quantization=quantization, dtype=dtype)
    sections.append(f"## How to load\n\n```python\n{code}```\n" + load_notes(kind, path))
    sections.append(versions_section(versions))
    sections.append(f"## Run configuration\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n")
    return "\n".join(sections)


def write_model_card(
    directory: str | Path,
    kind: str,
    run_cfg: Any,
    *,
    data: Any = None,
    train: Any = None,
    merge_report: dict[str, Any] | None = None,
    gguf_report: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    tokenizer: Any = None,
    path: str | Path | None = None,
) -> Path:
    """Write ``directory/README.md`` (replacing PEFT's blank template) atomically.

    The base model's source and quantization come from ``directory/qlora_kit.json``
    (:func:`~qlora_kit.export.provenance.record_provenance`), computed afresh when it is missing; the
    versions from ``directory/versions.json``. ``data`` and ``train`` take what ``recipe.run`` has (a
    DataReport and a TrainResult, or their dicts); when None they are read from ``run_dir`` (default:
    the parent of ``directory``, the run's output dir), and left out if not found there either.

    Returns:
        The README path.
    """
    from qlora_kit.config.io import package_versions
    from qlora_kit.export.card_data import data_summary, train_summary
    from qlora_kit.export.provenance import read_provenance
    from qlora_kit.model.source import describe_source

    directory = Path(directory)
    record = read_provenance(directory) or {}
    saved_data, saved_train = run_summaries(run_dir if run_dir is not None else directory.parent)
    versions = dict(_read_json(directory / "versions.json") or record.get("versions") or package_versions())
    source = record.get("base_model") or describe_source(run_cfg.model)
    if "gguf" in (kind, source["kind"]):
        versions.setdefault("gguf", metadata.version("gguf"))
    text = model_card(
        kind,
        run_cfg,
        source=source,
        data_summary=data_summary(data) or saved_data,
        train_summary=train_summary(train) or saved_train,
        merge_report=merge_report
        if merge_report is not None
        else _read_json(directory / "merge_report.json"),
        versions=versions,
        quantization=(record.get("trained_on") or {}).get("bitsandbytes_config"),
        path=path if path is not None else directory.resolve(),
        gguf_report=gguf_report,
        tokenizer=tokenizer,
    )
    return atomic_write_text(directory / README_FILE, text)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _export_dtype(kind: str, config: dict[str, Any], gguf_report: dict[str, Any] | None) -> str:
    if kind == "merged":
        return config_value(config, "export.dtype") or "bfloat16"
    if kind == "gguf":
        return (gguf_report or {}).get("reload_dtype") or "float32"
    return config_value(config, "quant.compute_dtype") or "bfloat16"
