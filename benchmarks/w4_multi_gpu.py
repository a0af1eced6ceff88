"""W4: the 8B shape on two GPUs through the library's own Trainer, DDP and FSDP2, against one GPU.

One script, three ways to run it (each appends a row to ``--out``; ``ratio`` = its tokens/s over the
``--mode single`` row of the same run id):

    python benchmarks/w4_multi_gpu.py --mode single --run-id RUN --out results.jsonl        # one GPU, grad_accum 2
    accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 2 \\
        benchmarks/w4_multi_gpu.py --mode ddp --run-id RUN --out results.jsonl
    accelerate launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 \\
        benchmarks/w4_multi_gpu.py --mode fsdp --run-id RUN --out results.jsonl

The global batch is the same in all three (2 rows x 2,048 tokens per GPU per pass, 2 GPUs' worth per
step); the rows are the same, so the loss curves are comparable step by step. FSDP needs adamw_torch
(bitsandbytes' optimizers cannot be sharded); the others use it too, so the three differ only in the
launch. Recorded: global tokens/s, per-GPU memory after the model is prepared and at the peak, the loss
curve, and (FSDP) the forward check's difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import commit, token_rows, versions  # noqa: E402
from ours import OursSession  # noqa: E402
from records import append_row, read_rows  # noqa: E402
from w2_shapes import ensure_shape, shape_dir, shape_ready  # noqa: E402

ROWS, SEQ = 2, 2048


class _Probe:
    """Trainer callback: memory once the model is prepared, step times, losses."""

    def __init__(self):
        self.after_prepare = None
        self.times: list[float] = []
        self.losses: list[float] = []
        self._last = None

    def on_train_begin(self, state):
        import torch

        torch.cuda.synchronize()
        self.after_prepare = torch.cuda.memory_allocated() / 2**30
        self._last = time.perf_counter()

    def on_step_end(self, state, metrics):
        import torch

        torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        if "loss" in metrics:
            self.losses.append(metrics["loss"])


def wait_for_shape(root: str, shape: str, timeout_s: float = 900) -> Path:
    """The shape's folder once the main process has finished writing it."""
    path = shape_dir(root, shape, False)
    deadline = time.monotonic() + timeout_s
    while not shape_ready(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written within {timeout_s:.0f} s")
        time.sleep(2)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["single", "ddp", "fsdp"], required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default="8B", choices=["1B", "8B"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes-dir", default="/tmp/qk-shapes")
    args = parser.parse_args()
    import torch

    from qlora_kit.training import Trainer

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if rank == 0:
        model_dir, _ = ensure_shape(args.shapes_dir, args.shape)
    else:  # one writer: two processes writing one shape folder race on its temporary files
        model_dir = wait_for_shape(args.shapes_dir, args.shape)
    session = OursSession(str(model_dir), f"cuda:{torch.cuda.current_device()}", optimizer="adamw_torch",
                          overrides=["adapter.dropout=0.0"])  # fmt: skip
    per_step = ROWS * 2  # rows of one optimizer step, all GPUs together
    cfg = session.cfg.train.model_copy(update={"max_steps": args.warmup + args.steps, "micro_batch_size": ROWS,
                                                "grad_accum": per_step // (ROWS * world)})  # fmt: skip
    rows = token_rows(per_step * (args.warmup + args.steps), SEQ, 50000, distinct=per_step)
    probe = _Probe()
    out_dir = Path(f"/tmp/qk-w4-{args.mode}")
    from qlora_kit.data import PaddedCollator

    trainer = Trainer(cfg.model_copy(update={"micro_batch_tokens": None}), output_dir=out_dir,
                      collate_fn=PaddedCollator(0), callbacks=[probe])  # fmt: skip
    started = time.perf_counter()
    trainer.fit(session.model, [{"input_ids": r, "labels": r} for r in rows])
    if rank != 0:
        return 0
    timed = sorted(probe.times[args.warmup :])
    step = timed[len(timed) // 2]
    row = {
        "run_id": args.run_id, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit(),
        "workload": "W4-fsdp" if args.mode == "fsdp" else "W4-ddp", "system": f"qlora_kit_{args.mode}",
        "status": "ok", "gpus": world,
        "device_name": f"{world}x {torch.cuda.get_device_name()}" if world > 1 else torch.cuda.get_device_name(), "tokens_per_s": round(per_step * SEQ / step, 1), "s_per_step": round(step, 4),
        "train_seconds": round(time.perf_counter() - started, 2), "mem_after_prepare_gib": round(probe.after_prepare, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3), "losses": [round(x, 5) for x in probe.losses],
        "loss_first": probe.losses[0], "loss_last": probe.losses[-1], "versions": versions(),
        "config": {"shape": args.shape, "rows_per_gpu_pass": ROWS, "seq": SEQ, "rows_per_step": per_step},
    }  # fmt: skip
    single = [
        r
        for r in read_rows(args.out)
        if r.get("run_id") == args.run_id and r.get("system") == "qlora_kit_single"
    ]
    if args.mode == "single":
        row["workload"] = "W4-single"
    elif single:
        row["ratio"] = round(row["tokens_per_s"] / single[-1]["tokens_per_s"], 3)
        row["mem_after_prepare_vs_single"] = round(
            row["mem_after_prepare_gib"] / single[-1]["mem_after_prepare_gib"], 3
        )
        row["max_loss_difference"] = max(
            abs(a - b) / abs(b) for a, b in zip(row["losses"], single[-1]["losses"], strict=True)
        )
    append_row(args.out, row)
    print(json.dumps(row)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
