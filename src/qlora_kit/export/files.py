"""Files every export writes: atomic directories, the generation config, the resolved run config."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RUN_CONFIG_FILE = "run_config.yaml"
CHAT_FORMATTERS = ("chatml", "chat_template")
_CHAT_END = "<|im_end|>"


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target`` that replaces ``target`` on success.

    Why: a crash or an exception while saving (disk full, a failed merge) must never leave a
    half-written adapter or model that a later ``from_pretrained`` would half-load. On success the
    old ``target`` (if any) is swapped out and deleted; on failure the temporary one is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(old / target.name)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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

    (directory / RUN_CONFIG_FILE).write_text(config_to_yaml(run_cfg), encoding="utf-8")
    (directory / "versions.json").write_text(
        json.dumps(package_versions(), indent=2) + "\n", encoding="utf-8"
    )


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device
