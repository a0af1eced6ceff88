"""W1's evaluation (the 45 eval rows of seed_improved.yaml) in three layouts, timed on this machine:
2 rows a pass (micro_batch_size), and passes of a 3,604-token budget (W1's on an H200) packed or padded.

    python benchmarks/eval_layouts.py [--budget TOKENS]

Why: on the GPU evaluation in budget passes pays (the host bounds small passes); on a CPU, which computes,
it may not (benchmarks/RESULTS.md, run 2026-12-01c). Prints one line per layout: passes, seconds, eval loss.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_w1 import SHARED, prepare  # noqa: E402

from qlora_kit.config.io import load_config  # noqa: E402
from qlora_kit.data.collate import make_collator  # noqa: E402
from qlora_kit.data.pipeline import build_datasets  # noqa: E402
from qlora_kit.formatting import build_formatter  # noqa: E402
from qlora_kit.model.adapters import AdapterBuilder  # noqa: E402
from qlora_kit.model.loading import ModelLoader  # noqa: E402
from qlora_kit.training.batches import pack_rows, row_lengths  # noqa: E402
from qlora_kit.training.evaluation import evaluate  # noqa: E402
from qlora_kit.training.head_loss import chunked_causal_lm_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=3604, help="tokens per budget pass")
    budget = parser.parse_args().budget
    work = Path(tempfile.mkdtemp())
    model_dir, train, _ = prepare(
        work, str(SHARED / "assets" / "gpt2-tokenizer"), str(SHARED / "data" / "alpaca_en_demo.json"), 99
    )
    cfg = load_config(
        str(Path(__file__).resolve().parents[1] / "examples/configs/seed_improved.yaml"),
        [f"model.name_or_path={model_dir}", f"data.source.path={train}", "data.subset.n=900"],
    )
    model, tok = ModelLoader(cfg.model, cfg.quant).load()
    model = AdapterBuilder(cfg.adapter).apply(model)
    data = build_datasets(cfg.data, build_formatter(cfg.data.formatter), tok)
    rows = data.eval
    auto = make_collator(cfg.data, tok)
    lengths = row_lengths(rows)
    print(len(rows), "eval rows", sum(lengths), "tokens")
    evaluate(model, rows, auto, 2, chunked_causal_lm_loss, None, [[0, 1]])  # warm-up, not timed
    for name, collate, passes in [
        ("2 rows a pass", auto, [list(range(i, min(i + 2, len(rows)))) for i in range(0, len(rows), 2)]),
        (
            "budget, packed",
            auto.packed,
            pack_rows(list(range(len(rows))), lengths, budget, auto.packed.tokens),
        ),
        (
            "budget, padded",
            auto.padded,
            pack_rows(list(range(len(rows))), lengths, budget, auto.padded.tokens),
        ),
    ]:
        t = time.perf_counter()
        m = evaluate(model, rows, collate, 2, chunked_causal_lm_loss, None, passes)
        print(
            f"{name:22s} {len(passes):3d} passes  {time.perf_counter() - t:6.1f} s  loss {m['eval_loss']:.6f}"
        )


if __name__ == "__main__":
    main()
