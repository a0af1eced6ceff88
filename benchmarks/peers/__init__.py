"""Peer systems measured beside qlora_kit: the plain HF + PEFT + bitsandbytes loop (with and without
Liger-Kernel) and Unsloth. Each exposes a session with ``train(rows, batch, steps) -> StepLog``."""
