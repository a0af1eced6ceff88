"""CPU step time: qlora_kit's Trainer vs the plain transformers + PEFT + bitsandbytes loop.

SmolLM2-135M (the quickstart's GGUF, dequantized and cached by ModelLoader) in NF4 + double quant,
LoRA r16 on all linear layers, torch AdamW, 4 x 224 random tokens per optimizer step; the median
seconds per step after warm-up, one JSON line per system, each system in its own process:

    OMP_NUM_THREADS=2 python benchmarks/cpu_step.py                       # both, one after the other
    python benchmarks/cpu_step.py --system plain --grad-checkpointing off
    python benchmarks/cpu_step.py --system ours --profile /tmp/ours.prof  # cProfile of the timed steps
    python benchmarks/cpu_step.py --system ours --ours-overrides train.mixed_precision=bf16
    python benchmarks/cpu_step.py --device cuda --model DIR --batch 8 --seq 32   # a GPU's per-step host work
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import token_rows, versions  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=["both", "ours", "plain"], default="both")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=224)
    ap.add_argument(
        "--grad-checkpointing",
        choices=["on", "off", "default"],
        default="on",
        help="both systems (the plain loop: prepare_model_for_kbit_training's switch); default: each "
        "system's own (qlora_kit: auto, decided by the memory plan; the plain loop: on)",
    )
    ap.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout of both systems")
    ap.add_argument("--ours-overrides", nargs="*", default=[], help="extra dotted overrides for qlora_kit")
    ap.add_argument(
        "--plain-eval-mode",
        action="store_true",
        help="plain loop without model.train() (as a loop that forgets it runs)",
    )
    ap.add_argument("--profile", help="write a cProfile of the timed steps to this file")
    ap.add_argument(
        "--torch-profile", help="write torch.profiler's op table (by input shape) of the timed steps here"
    )
    ap.add_argument("--model", help="model dir (default: the quickstart GGUF's cached conversion)")
    ap.add_argument("--device", default="cpu", help="where both systems train (cuda: the per-step host work)")
    ap.add_argument(
        "--compile-mode", help="torch.compile's mode for qlora_kit's compiled layers (compiling.COMPILE_MODE)"
    )
    return ap.parse_args(argv)


def model_dir() -> str:
    """SmolLM2-135M as a safetensors directory (ModelLoader converts the GGUF once and caches it)."""
    from qlora_kit.config.io import load_config
    from qlora_kit.model import ModelLoader
    from qlora_kit.quickstart import smollm2_gguf

    cfg = load_config({"model": {"name_or_path": str(smollm2_gguf())}})
    return ModelLoader(cfg.model, cfg.quant, device="cpu").source()


def session(args: argparse.Namespace, path: str):
    """The system's loaded model, ready to train."""
    gc = args.grad_checkpointing in (
        "on",
        "default",
    )  # the plain loop's default is prepare_model_for_kbit_training's
    if args.system == "ours":
        from ours import OursSession

        checkpointing = (
            [] if args.grad_checkpointing == "default" else [f"train.grad_checkpointing={str(gc).lower()}"]
        )
        overrides = [*checkpointing, f"adapter.dropout={args.dropout}", *args.ours_overrides]
        if args.compile_mode:
            from qlora_kit.training import compiling

            compiling.COMPILE_MODE = args.compile_mode
        return OursSession(path, args.device, overrides, optimizer="adamw_torch")
    from peers.hf_loop import HFLoopSession

    sess = HFLoopSession(
        path, args.device, dropout=args.dropout, optimizer="adamw_torch", grad_checkpointing=gc
    )
    if args.plain_eval_mode:
        sess.model.train = lambda mode=True: sess.model  # the loop's model.train() becomes a no-op
    return sess


@contextlib.contextmanager
def profiled(args: argparse.Namespace):
    """cProfile (``--profile``) or torch.profiler (``--torch-profile``) around the timed steps."""
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as prof:
            yield
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=60
        )
        if args.device == "cuda":  # where the host's time goes by op, then the device's
            table += "\n" + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        Path(args.torch_profile).write_text(table, encoding="utf-8")
    elif args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        yield
        profiler.disable()
        profiler.dump_stats(args.profile)
    else:
        yield


def measure(args: argparse.Namespace) -> dict:
    import torch

    path = args.model or model_dir()
    sess = session(args, path)
    rows = token_rows(args.batch * (args.warmup + args.steps), args.seq, len(sess.tokenizer)
                      if hasattr(sess, "tokenizer") else sess.config.vocab_size)  # fmt: skip
    if args.warmup:
        sess.train(rows, args.batch, args.warmup)
    with profiled(args):
        log = sess.train(rows[args.batch * args.warmup :], args.batch, args.steps)
    summary = log.summary(0, args.batch * args.seq)
    return {
        "workload": "cpu-step", "system": "qlora_kit" if args.system == "ours" else "plain_loop",
        "s_per_step": summary["s_per_step"], "cpu_s_per_step": summary["cpu_s_per_step"], "step_seconds": summary["step_seconds"],
        "tokens_per_s": summary["tokens_per_s"], "loss_first": summary["loss_first"],
        "loss_last": summary["loss_last"], "grad_norm": summary["grad_norm"],
        "batch": args.batch, "seq": args.seq, "grad_checkpointing": args.grad_checkpointing,
        "plain_eval_mode": args.plain_eval_mode if args.system == "plain" else None,
        "threads": torch.get_num_threads(), "load_seconds": round(sess.load_seconds, 2),
        "knobs": sess.knobs(), "versions": versions(), "loadavg_at_end": os.getloadavg(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.system != "both":
        print(json.dumps(measure(args)), flush=True)
        return 0
    rest = [a for a in (argv if argv is not None else sys.argv[1:])]
    status = 0
    for system in ("ours", "plain"):  # one process each, one after the other
        status |= subprocess.run([sys.executable, __file__, "--system", system, *rest]).returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main())
