"""Peer: the plain HF + PEFT + bitsandbytes loop, as ../shared/BENCHMARKS.md describes it.

``from_pretrained(quantization_config=NF4 + double quant, bf16 compute)``, ``prepare_model_for_kbit_training``
(which upcasts the non-quantized parameters to fp32 and turns gradient checkpointing on),
``get_peft_model`` (LoRA r16 on all linear layers), ``bnb.optim.PagedAdamW8bit``, and the loop a user
writes: ``loss = model(input_ids, labels=input_ids).loss`` under bf16 autocast, backward, clip, step.
With ``liger=True``, ``apply_liger_kernel_to_llama()`` patches the Llama classes before loading.
"""

from __future__ import annotations

import time
from typing import Any

from bench_common import LORA, Clock, StepLog


def build_optimizer(model: Any, kind: str) -> Any:
    """``paged_adamw_8bit`` (bitsandbytes; unpaged on CPU) or ``adamw_torch``, no weight decay."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw_torch":
        return torch.optim.AdamW(params, lr=LORA["lr"], weight_decay=0.0)
    import bitsandbytes as bnb

    return bnb.optim.PagedAdamW8bit(params, lr=LORA["lr"], weight_decay=0.0)


def plain_loop(
    model: Any, optimizer: Any, rows: list[list[int]], batch: int, steps: int, device: str
) -> StepLog:
    """The user's loop: ``model(input_ids, labels=input_ids).loss`` under bf16 autocast, one micro-batch
    per optimizer step, gradients clipped at 1.0 (as the Trainer does), each step timed after a sync."""
    import torch

    log, clock = StepLog(), Clock(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # from_pretrained returns eval mode and get_peft_model keeps it for the base: without this the decoder
    # layers skip gradient checkpointing (only the new LoRA dropout modules are in train mode)
    model.train()
    clock.start()
    for step in range(steps):
        ids = torch.tensor(rows[step * batch : (step + 1) * batch], device=device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.losses.append(loss.item())
        log.grad_norms.append(grad_norm.item())
        clock.lap(log)
    return log


class HFLoopSession:
    """The plain loop's model and optimizer, loaded once.

    Args:
        model_dir: a model directory (with its tokenizer).
        device: where the model lives.
        liger: patch the Llama classes with Liger-Kernel first.
        dropout: LoRA dropout.
        optimizer: ``paged_adamw_8bit`` or ``adamw_torch``.
        grad_checkpointing: ``prepare_model_for_kbit_training``'s ``use_gradient_checkpointing``.
    """

    def __init__(self, model_dir: str, device: str, liger: bool = False, dropout: float = 0.05,
                 optimizer: str = "paged_adamw_8bit", grad_checkpointing: bool = True):  # fmt: skip
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        self.device = device
        started = time.perf_counter()
        if liger:
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            apply_liger_kernel_to_llama()
        bnb_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=bnb_config, dtype=torch.bfloat16, device_map={"": device}
        )
        model.config.use_cache = False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_checkpointing)
        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
        self.model = get_peft_model(model, lora)
        self.optimizer = build_optimizer(self.model, optimizer)
        self.config = self.model.config
        self.load_seconds = time.perf_counter() - started
        self._knobs = {"liger": liger, "lora_dropout": dropout, "optimizer": optimizer, "autocast": "bf16",
                       "grad_checkpointing": grad_checkpointing, "target_modules": "all-linear",
                       "prepare_model_for_kbit_training": True, "max_grad_norm": 1.0, **LORA}  # fmt: skip

    def knobs(self) -> dict[str, Any]:
        """What this peer was configured with."""
        return dict(self._knobs)

    def train(self, rows: list[list[int]], batch: int, steps: int) -> StepLog:
        """``steps`` optimizer steps of ``batch`` rows each."""
        return plain_loop(self.model, self.optimizer, rows, batch, steps, self.device)
