"""Shared pieces of the W1 seed-job benchmark (../shared/BENCHMARKS.md): the data split, the stand-in
model, and the held-out loss on supervised (response) tokens, computed the same way for every system."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

SEED_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n{}"
)
HELD_OUT = 99  # alpaca_en_demo.json has 999 rows: 900 train, 99 held out (after shuffle seed 42)


def split_rows(data_path: str | Path, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """The W1 split: shuffle with the seed's seed, hold out the last HELD_OUT rows."""
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(data_path), split="train").shuffle(seed=seed).to_list()
    return rows[:-HELD_OUT], rows[-HELD_OUT:]


def write_rows(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def make_standin_model(tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """distilgpt2-shaped random model (speed does not depend on weight values) saved with the GPT-2 tokenizer."""
    from transformers import AutoTokenizer

    from qlora_kit.testing import make_distilgpt2_shape

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = 1024
    make_distilgpt2_shape(out_dir, tokenizer)
    return Path(out_dir)


@torch.no_grad()
def heldout_response_loss(model, tokenizer, rows: list[dict], batch_size: int = 16) -> float:
    """Mean cross-entropy over response tokens (+ EOS) of held-out rows, prompt tokens excluded."""
    device = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        ids, labels = [], []
        for row in rows[start : start + batch_size]:
            prompt = tokenizer(SEED_TEMPLATE.format(row["instruction"], row["input"], ""))["input_ids"]
            answer = tokenizer(row["output"])["input_ids"] + [tokenizer.eos_token_id]
            seq = (prompt + answer)[:1024]
            ids.append(seq)
            labels.append(([-100] * len(prompt) + answer)[:1024])
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tokenizer.eos_token_id, dtype=torch.long)
        label_t = torch.full((len(ids), width), -100, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (s, lab) in enumerate(zip(ids, labels, strict=True)):
            input_ids[i, : len(s)] = torch.tensor(s)
            label_t[i, : len(s)] = torch.tensor(lab)
            mask[i, : len(s)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = label_t.to(device)[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            target.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += loss.item()
        count += int((target != -100).sum())
    model.train(was_training)
    return total / max(count, 1) if count else math.nan
