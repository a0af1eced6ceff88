"""Adapter export: the LoRA adapter in PEFT format, with its tokenizer, generation config and run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlora_kit.errors import QloraKitError
from qlora_kit.export.card import write_model_card
from qlora_kit.export.files import generation_config_for, write_run_files
from qlora_kit.export.provenance import record_provenance
from qlora_kit.files import atomic_dir
from qlora_kit.rundir.manifest import write_manifest

ADAPTER_DIR = "adapter"


def require_peft_model(model: Any) -> None:
    """Raise unless ``model`` is a ``peft.PeftModel`` (nothing else has an adapter to export)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise QloraKitError(
            f"export: expected a peft.PeftModel (from AdapterBuilder.apply), got {type(model).__name__}"
        )


def save_adapter(
    model: Any, tokenizer: Any, target: str | Path, run_cfg: Any, state_dict: dict[str, Any] | None = None
) -> Path:
    """Write ``target`` atomically: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's own
    format: ``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM`` load it), the tokenizer, a
    ``generation_config.json`` whose EOS and pad ids are the training tokenizer's, the run config, the base
    model's original source and the quantization it was trained on (``qlora_kit.json``,
    ``quantization_config.json``), and a model card (``README.md``) built from the run's output dir.

    PEFT also saves the embedding matrices when the tokenizer grew (an added pad token), so the
    adapter loads onto a base resized the same way.

    ``state_dict``: the trainable tensors by parameter name, when the model's own are shards (FSDP).

    Returns:
        ``target`` as a Path.
    """
    require_peft_model(model)
    target = Path(target)
    with atomic_dir(target) as tmp:
        model.save_pretrained(
            tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {})
        )
        tokenizer.save_pretrained(tmp)
        generation_config_for(model, tokenizer, run_cfg).save_pretrained(tmp)
        write_run_files(tmp, run_cfg)
        record_provenance(tmp, "adapter", run_cfg, model=model)
        write_model_card(
            tmp, "adapter", run_cfg, run_dir=target.parent, tokenizer=tokenizer, path=target.resolve()
        )
        write_manifest(tmp, export="adapter")  # last: it lists every file above
    return target
