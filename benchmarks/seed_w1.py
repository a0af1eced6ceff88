"""W1 seed job (../shared/BENCHMARKS.md): the seed recipe through `qlora-kit train`, on local stand-ins.

A distilgpt2-shaped GPT-2 (random init: speed does not depend on the weights) with the real GPT-2
tokenizer, and Alpaca rows from a local file, trained with examples/configs/seed_distilgpt2_alpaca.yaml
(3 epochs, batch 2 x 5, padding to 1,024, adamw_8bit, ... and the merged float16 export), with the model
and data swapped in by overrides. Prints ONE JSON line: training wall time (the trainer's, excluding
loading and export), the whole command's wall time, steps, and the held-out loss on response tokens.

The data file has 999 rows: they are shuffled with seed 42, the first ``--heldout`` (default 99) are held
out, and the seed's subset step keeps all the others (900 rows: 90 optimizer steps per epoch, 270 in all,
against the seed's 300 for 1,000 rows; compare seconds per step). ``--heldout 0`` trains on all 999 rows
(300 steps, the seed's count) and reports no held-out loss.

    python benchmarks/seed_w1.py                      # GPU machine, full job
    python benchmarks/seed_w1.py --max-steps 3        # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or shared/ inside it (as on the GPU machine)
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=str(SHARED / "assets" / "gpt2-tokenizer"))
    parser.add_argument("--data", default=str(SHARED / "data" / "alpaca_en_demo.json"))
    parser.add_argument(
        "--config", default=str(ROOT / "examples" / "configs" / "seed_distilgpt2_alpaca.yaml")
    )
    parser.add_argument("--work-dir", help="where the model, data and run go (default: a temporary dir)")
    parser.add_argument("--heldout", type=int, default=99, help="rows held out for the response loss")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke check)")
    parser.add_argument("--profile", help="write a cProfile of the `qlora-kit train` process here")
    parser.add_argument("overrides", nargs="*", help="extra dotted overrides for `qlora-kit train`")
    return parser.parse_args(argv)


def prepare(work: Path, tokenizer_dir: str, data_file: str, heldout: int) -> tuple[Path, Path, Path]:
    """The distilgpt2-shaped model dir (with the GPT-2 tokenizer) and the train / held-out row files."""
    from transformers import AutoTokenizer

    from qlora_kit.testing import make_distilgpt2_shape

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = 1024
    model_dir = work / "distilgpt2-shape"
    if not (model_dir / "config.json").is_file():
        make_distilgpt2_shape(model_dir, tokenizer)
    rows = json.loads(Path(data_file).read_text(encoding="utf-8"))
    random.Random(42).shuffle(rows)
    train, held = work / "train.json", work / "heldout.json"
    train.write_text(json.dumps(rows[heldout:]), encoding="utf-8")
    held.write_text(json.dumps(rows[:heldout]), encoding="utf-8")
    return model_dir, train, held


def heldout_loss(run_dir: Path, held_file: Path) -> float | None:
    """Held-out response loss of the adapter a `qlora-kit train` run saved in ``run_dir``."""
    import torch
    from peft import PeftModel

    from qlora_kit.config.io import load_config
    from qlora_kit.model.loading import ModelLoader

    rows = json.loads(held_file.read_text(encoding="utf-8"))
    if not rows:
        return None
    cfg = load_config(run_dir / "run_config.yaml")
    base, tokenizer = ModelLoader(cfg.model, cfg.quant).load()
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    loss = response_loss(model, tokenizer, rows)
    del model, base
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return loss


def response_loss(model, tokenizer, rows: list[dict], max_length: int = 1024) -> float:
    """Mean cross-entropy per response token (seed template, prompt masked, EOS included) of ``model``.

    Shared with the TRL peer (w1_peer_trl.py) so both systems are scored by the same code.
    """
    from qlora_kit.data import PaddedCollator
    from qlora_kit.formatting import build_formatter
    from qlora_kit.training.evaluation import inference_mode
    from qlora_kit.training.loss import causal_lm_loss, count_supervised

    formatter = build_formatter("alpaca_reference")
    encoded = [formatter.encode(r, tokenizer, train_on_inputs=False, max_length=max_length) for r in rows]
    collate = PaddedCollator(pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with inference_mode(model):
        for start in range(0, len(encoded), 8):
            batch = collate(
                [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[start : start + 8]]
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            total += causal_lm_loss(model, batch).item()
            tokens += count_supervised(batch)
    return total / max(tokens, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seed-w1-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, train, held = prepare(work, args.tokenizer, args.data, args.heldout)
    n_train = len(json.loads(train.read_text(encoding="utf-8")))
    run_dir = work / "run"
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []  # the host's time, by function
    command = [
        sys.executable, *profile, "-m", "qlora_kit.cli", "train", str(Path(args.config).resolve()),
        f"model.name_or_path={model_dir}", f"data.source.path={train}", f"data.subset.n={n_train}",
        f"output_dir={run_dir}", *([f"train.max_steps={args.max_steps}"] if args.max_steps else []),
        *args.overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    command_seconds = time.perf_counter() - started
    print(done.stdout, file=sys.stderr)
    if done.returncode not in (0, 3):  # 3: the merge was flagged by verification, training finished
        print(json.dumps({"workload": "W1", "error": f"qlora-kit train exited {done.returncode}"}))
        return done.returncode
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    import torch

    from qlora_kit.config.io import package_versions

    result = {
        "workload": "W1 seed job",
        "system": "qlora_kit",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "train_seconds": summary["train_seconds"],
        "command_seconds": round(command_seconds, 1),
        "steps": summary["steps"],
        "seconds_per_step": round(summary["train_seconds"] / max(summary["steps"], 1), 4),
        "train_rows": n_train,
        "tokens_non_padding": summary["tokens"],
        "train_loss": summary["train_loss"],
        "heldout_rows": args.heldout,
        "heldout_response_loss": heldout_loss(run_dir, held),
        "peak_cuda_memory_gb": summary["peak_cuda_memory_gb"],
        "merge_passed": summary["merge_passed"],
        "versions": {
            k: v
            for k, v in package_versions().items()
            if k in ("torch", "transformers", "peft", "bitsandbytes")
        },
        "run_dir": str(run_dir),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
