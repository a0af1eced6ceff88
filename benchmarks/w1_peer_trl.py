"""W1 peer: the seed document's recipe with TRL's SFTTrainer, on local stand-ins.

Same code as the seed (prompts padded to 1,024 tokens, pad = eos, the seed's SFTConfig) except: the
model is a random distilgpt2-shaped GPT-2, the tokenizer and Alpaca rows come from local paths, and on
transformers 5 `warmup_ratio` is spelled `warmup_steps=0.03`. Prints one JSON line.

    python benchmarks/w1_peer_trl.py --tokenizer DIR --data alpaca_en_demo.json [--max-steps N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from seed_w1 import prepare, response_loss
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import SFTConfig, SFTTrainer

from qlora_kit.formatting.alpaca import REFERENCE_TEMPLATE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--heldout", type=int, default=99)
    ap.add_argument("--work-dir", help="shared with seed_w1.py's --work-dir to reuse the stand-in model")
    args = ap.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="w1-trl-"))
    work.mkdir(parents=True, exist_ok=True)
    # The same stand-in model and train / held-out split as seed_w1.py (qlora_kit's side).
    prepared = time.perf_counter()
    model_dir, train_file, held_file = prepare(work, args.tokenizer, args.data, args.heldout)
    prepare_seconds = time.perf_counter() - prepared  # not counted: seed_w1.py prepares outside its command
    train_rows = json.loads(train_file.read_text(encoding="utf-8"))
    heldout = json.loads(held_file.read_text(encoding="utf-8"))

    cuda = torch.cuda.is_available()
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=bnb_config, device_map={"": 0 if cuda else "cpu"}, use_cache=False
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.eos_token

    data = Dataset.from_list(train_rows)
    data = data.map(
        lambda b: {
            "text": [
                REFERENCE_TEMPLATE.format(i, x, o)
                for i, x, o in zip(b["instruction"], b["input"], b["output"], strict=True)
            ]
        },
        batched=True,
    )
    data = data.map(lambda s: tokenizer(s["text"], truncation=True, padding="max_length"), batched=True)

    peft_config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["c_attn", "c_proj", "c_fc"], bias="none",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    bf16 = cuda and torch.cuda.is_bf16_supported()
    training_args = SFTConfig(
        output_dir=f"{work}/outputs", logging_steps=10, num_train_epochs=3, max_steps=args.max_steps,
        per_device_train_batch_size=2, per_device_eval_batch_size=2, gradient_accumulation_steps=5,
        gradient_checkpointing=True, learning_rate=2e-4, optim="adamw_8bit", weight_decay=0.01,
        max_grad_norm=0.3, warmup_steps=0.03, fp16=cuda and not bf16, bf16=bf16,
        dataset_text_field="text", report_to=[], save_strategy="no", seed=42,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, train_dataset=data, peft_config=peft_config, args=training_args)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    from bench_common import process_seconds

    command_seconds = process_seconds() - prepare_seconds  # from the process start: imports count too
    tokens = out.global_step * 10 * 1024
    real = sum(sum(m) for m in data["attention_mask"]) * 3
    result = {
        "system": "seed_trl", "train_seconds": round(seconds, 2), "optimizer_steps": out.global_step,
        "command_seconds": round(command_seconds, 1),
        "tokens_processed": tokens, "real_tokens": real,
        "heldout_response_loss": round(response_loss(trainer.model, tokenizer, heldout), 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
