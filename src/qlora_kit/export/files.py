"""Files every export writes: the generation config and the resolved run config (atomically)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def generation_config_for(model: Any, tokenizer: Any, run_cfg: Any) -> Any:
    """The model's generation config with EOS (the run's formatter's stop tokens), pad and BOS ids taken
    from the training tokenizer.

    The base model's own config may name an EOS the fine-tuned model never learned to emit (e.g.
    ``<|endoftext|>`` for a ChatML-trained model) or no pad id at all; generation then runs on.
    """
    from transformers import GenerationConfig

    from qlora_kit.formatting import build_formatter
    from qlora_kit.formatting.tokens import pad_token_id

    config = copy.deepcopy(getattr(model, "generation_config", None)) or GenerationConfig()
    eos = build_formatter(run_cfg.data.formatter, tokenizer).stop_token_ids(tokenizer)
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    config.pad_token_id = pad_token_id(tokenizer)
    config.bos_token_id = tokenizer.bos_token_id
    return config


def write_run_files(directory: Path, run_cfg: Any) -> None:
    """``run_config.yaml`` and ``versions.json``: an export can be repeated and generated from alone."""
    from qlora_kit.config.io import write_run_config

    write_run_config(run_cfg, directory)


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device
