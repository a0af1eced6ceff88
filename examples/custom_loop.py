"""Your own training loop on qlora_kit's components: loader, formatter, data, adapter, loss, export.

Everything ``qlora_kit.run`` does, spelled out, with a plain PyTorch loop in the middle (no Accelerate,
no accumulation) to show which pieces are reusable on their own::

    python examples/custom_loop.py --max-steps 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qlora_kit import load_config
from qlora_kit.config.io import write_run_config
from qlora_kit.data import build_datasets, build_formatter, make_collator
from qlora_kit.export import build_exporter
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.quickstart import smollm2_gguf
from qlora_kit.quickstart.task import make_rows, write_jsonl
from qlora_kit.training.loss import causal_lm_loss, count_supervised


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="hub id, model directory or .gguf (default: the quickstart's SmolLM2)"
    )
    parser.add_argument("--data", help="dataset with instruction/input/output rows (default: generated)")
    parser.add_argument("--output-dir", default="runs/custom-loop")
    parser.add_argument("--max-steps", type=int, default=30)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)

    cfg = load_config({
        "output_dir": str(out),
        "model": {"name_or_path": args.model or str(smollm2_gguf())},
        "adapter": {"r": 16, "alpha": 32},
        "data": {"source": {"path": args.data or str(write_jsonl(make_rows(400, seed=0), out / "data.jsonl"))},
                 "formatter": {"kind": "chatml"}, "max_length": 128},
        "export": {"kind": "adapter"},
    })  # fmt: skip
    write_run_config(cfg, out)
    model, tokenizer = ModelLoader(cfg.model, cfg.quant).load()
    data = build_datasets(cfg.data, build_formatter(cfg.data.formatter), tokenizer, output_dir=out)
    model = AdapterBuilder(cfg.adapter).apply(prepare_for_training(model, grad_checkpointing=False))
    collate = make_collator(cfg.data, tokenizer)
    device = next(model.parameters()).device

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = torch.utils.data.DataLoader(data.train, batch_size=8, shuffle=True, collate_fn=collate)
    model.train()
    keep_4bit_weights_trainable(model)  # never train through bitsandbytes' CPU inference layout
    step = 0
    while step < args.max_steps:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            # causal_lm_loss sums token cross-entropies; divide by the supervised tokens for the mean
            loss = causal_lm_loss(model, batch) / max(count_supervised(batch), 1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 10 == 0 or step == args.max_steps:
                print(f"step {step}: loss {loss.item():.4f}")
            if step == args.max_steps:
                break

    result = build_exporter(cfg.export).export(model, tokenizer, out, cfg)
    print(result.summary())


if __name__ == "__main__":
    main()
