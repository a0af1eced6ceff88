"""Data pipeline runtime and batching efficiency on the shared Alpaca demo file with the GPT-2 tokenizer.

    python benchmarks/data_efficiency.py [--data ../shared/data/alpaca_en_demo.json]
                                         [--tokenizer ../shared/assets/gpt2-tokenizer]

Builds the seed's setting (alpaca_reference, max_length 1024, micro batch 2) and reports, for padding to
max_length (the seed), padding to the longest row and packing: computed token positions, and the share
of them that are real tokens and supervised tokens. The figures are measured by running the real
collators over one epoch in data order, and compared with the data report's estimate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def measure(bundle, data_cfg, tokenizer, micro_batch: int) -> tuple[int, int, int]:
    from qlora_kit.data import make_collator

    collate = make_collator(data_cfg, tokenizer)
    rows = bundle.train.to_list()
    processed = real = supervised = 0
    for start in range(0, len(rows), micro_batch):
        batch = collate(rows[start : start + micro_batch])
        processed += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        supervised += int((batch["labels"] != -100).sum())
    return processed, real, supervised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "shared/data/alpaca_en_demo.json"))
    parser.add_argument("--tokenizer", default=str(ROOT / "shared/assets/gpt2-tokenizer"))
    parser.add_argument("--micro-batch", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from qlora_kit.config import DataConfig
    from qlora_kit.data import build_datasets, build_formatter

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, model_max_length=1024)
    tokenizer.pad_token = tokenizer.eos_token  # the seed's pad policy
    for train_on_inputs in (False, True):
        base = {"source": {"path": args.data}, "formatter": {"kind": "alpaca_reference"}, "max_length": 1024}
        start = time.perf_counter()
        cfg = DataConfig.model_validate({**base, "padding": "max_length", "train_on_inputs": train_on_inputs})
        bundle = build_datasets(
            cfg, build_formatter(cfg.formatter), tokenizer, micro_batch_size=args.micro_batch
        )
        wall = time.perf_counter() - start
        report = bundle.report
        print(
            f"\ntrain_on_inputs={train_on_inputs}: {report.rows_kept} rows, {report.tokens:,} tokens, "
            f"{report.supervised_tokens:,} supervised; build_datasets {wall:.2f} s (report says {report.seconds:.2f} s)"
        )
        print(f"  {'batching':<22}{'computed':>11}{'real':>8}{'supervised':>12}   report estimate (real)")
        variants = {"padding: max_length": {"padding": "max_length"}, "padding: longest": {"padding": "longest"},
                    "packing": {"packing": True}}  # fmt: skip
        for name, extra in variants.items():
            variant = DataConfig.model_validate({**base, **extra, "train_on_inputs": train_on_inputs})
            processed, real, supervised = measure(bundle, variant, tokenizer, args.micro_batch)
            estimate = report.efficiency[name]
            assert estimate.processed == processed, (name, estimate.processed, processed)
            print(f"  {name:<22}{processed:>11,}{real / processed:>8.1%}{supervised / processed:>12.1%}"
                  f"   {estimate.real_fraction:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
