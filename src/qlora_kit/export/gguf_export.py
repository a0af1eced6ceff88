"""The `gguf` export: the verified merged model (``merged/``), then one GGUF file written from it for
llama.cpp (``gguf/model-<dtype>.gguf``) and verified by reloading it with transformers.

The file is made from the merged model as saved (reloaded from ``merged/``), so what is verified is what
was shipped. Its verification report is added to ``merged/merge_report.json`` under ``gguf`` (and shown in
``gguf/README.md``); each directory's manifest is written last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qlora_kit.export.merged import MERGE_REPORT

logger = logging.getLogger(__name__)

GGUF_DIR = "gguf"
_GGUF_DTYPE_OF = {"float16": "f16", "bfloat16": "bf16"}


def gguf_dtype(cfg: Any) -> str:
    """The GGUF tensor type a `gguf` export section asks for, ``auto`` resolved from the merged dtype."""
    return _GGUF_DTYPE_OF[cfg.dtype] if cfg.gguf_dtype == "auto" else cfg.gguf_dtype


def export_gguf(
    merged_dir: Path,
    tokenizer: Any,
    output_dir: Path,
    run_cfg: Any,
    cfg: Any,
    merge_report: dict[str, Any],
    *,
    device: Any = None,
    verify_rows: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Write and verify ``output_dir/gguf/model-<dtype>.gguf`` from the merged model in ``merged_dir``.

    Args:
        merged_dir: The saved merged model (``merge_and_verify``'s output).
        tokenizer: The run's tokenizer.
        merge_report: ``merge_report.json``'s contents; the GGUF report is added under ``gguf``.
        device: Where to reload the merged model (the trained model's device).
        verify_rows: Held-out encoded rows; built-in prompts when None.

    Returns:
        (the `.gguf` path, the updated merge report). ``report["gguf"]["passed"]`` is False when the file's
        logits or tokenizer differ from the merged model's beyond ``cfg.gguf_max_mean_kl``.
    """
    from transformers import AutoModelForCausalLM

    from qlora_kit.export.card import write_model_card
    from qlora_kit.export.gguf_verify import verify_gguf
    from qlora_kit.export.gguf_writer import write_gguf
    from qlora_kit.export.provenance import record_provenance
    from qlora_kit.files import atomic_dir, atomic_write_json
    from qlora_kit.rundir.manifest import write_manifest

    dtype = gguf_dtype(cfg)
    target = output_dir / GGUF_DIR
    name = f"model-{dtype}.gguf"
    place = {"": str(device)} if device is not None else None
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=cfg.dtype, device_map=place)
    with atomic_dir(target) as tmp:
        path = write_gguf(merged, tokenizer, tmp / name, dtype=dtype, name=output_dir.resolve().name)
        report = verify_gguf(path, merged, tokenizer, verify_rows, max_mean_kl=cfg.gguf_max_mean_kl)
        record_provenance(tmp, "gguf", run_cfg)
        write_model_card(tmp, "gguf", run_cfg, gguf_report=report, run_dir=output_dir, tokenizer=tokenizer,
                         path=(target / name).resolve())  # fmt: skip
        write_manifest(tmp, export="gguf")  # last: it lists every file above
    del merged
    merge_report = {**merge_report, "gguf": report}
    atomic_write_json(merged_dir / MERGE_REPORT, merge_report)
    write_manifest(merged_dir, export="merged")  # merge_report.json changed: its manifest follows
    (logger.info if report["passed"] else logger.warning)(report["message"])
    return target / name, merge_report
