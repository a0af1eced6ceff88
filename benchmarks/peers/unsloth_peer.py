"""Peer: Unsloth 2026.10.9 (../shared/tools/gpu-wheels-unsloth.sh installs it on the GPU machine).

Its fast path as Unsloth documents it: ``FastLanguageModel.from_pretrained(load_in_4bit=True)`` (NF4 +
double quant, bf16), ``get_peft_model`` with r16 on q,k,v,o,gate,up,down, dropout 0,
``use_gradient_checkpointing="unsloth"``, then the same plain loop and paged AdamW 8-bit as the HF
peer. ``unsloth`` must be imported before transformers and peft: the worker imports this module first.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench_common import LORA

from peers.hf_loop import build_optimizer, plain_loop

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def import_unsloth() -> Any:
    """Import unsloth offline and without its usage statistics (no network on the GPU machine)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth

    return unsloth


class UnslothSession:
    """Unsloth's 4-bit model with LoRA, loaded once.

    Args:
        model_dir: a model directory with its tokenizer.
        device: must be CUDA.
        max_seq: ``max_seq_length`` (the longest sequence it will train on).
        dropout: LoRA dropout (0 keeps Unsloth's fused LoRA kernels).
        optimizer: ``paged_adamw_8bit`` or ``adamw_torch``.
    """

    def __init__(self, model_dir: str, device: str, max_seq: int, dropout: float = 0.0,
                 optimizer: str = "paged_adamw_8bit"):  # fmt: skip
        import_unsloth()
        import torch
        from unsloth import FastLanguageModel

        self.device = device
        started = time.perf_counter()
        model, _ = FastLanguageModel.from_pretrained(
            model_name=model_dir, max_seq_length=max_seq, dtype=torch.bfloat16, load_in_4bit=True
        )
        model = FastLanguageModel.get_peft_model(
            model, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout, target_modules=TARGETS,
            bias="none", use_gradient_checkpointing="unsloth", random_state=0, max_seq_length=max_seq,
        )  # fmt: skip
        FastLanguageModel.for_training(model)
        self.model = model
        self.optimizer = build_optimizer(model, optimizer)
        self.config = model.config
        self.load_seconds = time.perf_counter() - started
        self._knobs = {"lora_dropout": dropout, "optimizer": optimizer, "autocast": "bf16",
                       "use_gradient_checkpointing": "unsloth", "target_modules": TARGETS,
                       "max_seq_length": max_seq, "max_grad_norm": 1.0, **LORA}  # fmt: skip

    def knobs(self) -> dict[str, Any]:
        """What this peer was configured with."""
        return dict(self._knobs)

    def train(self, rows: list[list[int]], batch: int, steps: int) -> Any:
        """``steps`` optimizer steps of ``batch`` rows each, in the plain loop."""
        return plain_loop(self.model, self.optimizer, rows, batch, steps, self.device)
