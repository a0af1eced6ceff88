"""Files every export writes: the generation config and the resolved run config (atomically)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from qlora_kit.files import atomic_write_json, atomic_write_text

RUN_CONFIG_FILE = "run_config.yaml"
CHAT_FORMATTERS = ("chatml", "chat_template")
_CHAT_END = "<|im_end|>"


def eos_token_ids(tokenizer: Any, formatter_kind: str | None) -> list[int]:
    """Token ids that end a reply: the tokenizer's EOS, plus ChatML's ``<|im_end|>`` for chat formats
    when it is a single token of the vocabulary (it ends each assistant turn)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if formatter_kind in CHAT_FORMATTERS:
        end = tokenizer.convert_tokens_to_ids(_CHAT_END)
        if isinstance(end, int) and end != tokenizer.unk_token_id and end not in ids:
            ids.append(end)
    return ids


def generation_config_for(model: Any, tokenizer: Any, formatter_kind: str | None) -> Any:
    """The model's generation config with EOS, pad and BOS ids taken from the training tokenizer.

    The base model's own config may name an EOS the fine-tuned model never learned to emit (e.g.
    ``<|endoftext|>`` for a ChatML-trained model) or no pad id at all; generation then runs on.
    """
    from transformers import GenerationConfig

    config = copy.deepcopy(getattr(model, "generation_config", None)) or GenerationConfig()
    eos = eos_token_ids(tokenizer, formatter_kind)
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config.bos_token_id = tokenizer.bos_token_id
    return config


def write_run_files(directory: Path, run_cfg: Any) -> None:
    """``run_config.yaml`` and ``versions.json``: an export can be repeated and generated from alone."""
    from qlora_kit.config.io import config_to_yaml, package_versions

    atomic_write_text(directory / RUN_CONFIG_FILE, config_to_yaml(run_cfg))
    atomic_write_json(directory / "versions.json", package_versions())


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device
