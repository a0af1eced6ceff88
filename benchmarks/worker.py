"""One (workload, system) measurement, in its own process: the harness starts one worker per run.

    python benchmarks/worker.py --spec SPEC.json --result RESULT.json

The spec (written by harness.py) names the workload, the system and every setting; the worker writes
its measurements to the result file (W3 after every probe too, so a killed search keeps what it found)
and exits 0, 1 on an error (the message is in the result), or w3_probe.RESTART when a W3 search must go
on in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent


def write(path: str, data: dict[str, Any]) -> None:
    """Replace the result file atomically (the harness may read it after a kill)."""
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def make_session(spec: dict[str, Any]) -> Any:
    """The system's loaded model, ready for ``train(rows, batch, steps)``."""
    base, device, model_dir = spec["base"], spec["device"], spec["model_dir"]
    if base == "unsloth":
        from peers.unsloth_peer import UnslothSession

        return UnslothSession(model_dir, device, max_seq=spec["max_seq_length"], optimizer=spec["optimizer"])
    if base in ("hf_loop", "hf_liger"):
        from peers.hf_loop import HFLoopSession

        return HFLoopSession(model_dir, device, liger=base == "hf_liger", dropout=spec["peer_dropout"],
                             optimizer=spec["optimizer"])  # fmt: skip
    from ours import OursSession

    if os.environ.get("QK_BENCH_ACT_BUDGET"):  # experiment: the compiler's own activation memory budget
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = float(os.environ["QK_BENCH_ACT_BUDGET"])
    for item in os.environ.get("QK_BENCH_FUNCTORCH", "").split():  # experiment: NAME=0|1 partitioner flags
        import torch._functorch.config as functorch_config

        name, _, value = item.partition("=")
        setattr(functorch_config, name, value == "1")
    if os.environ.get("QK_BENCH_LIGHT_COMPILED") in ("0", "1"):  # A/B: the light dropout in compiled layers
        from qlora_kit.model.lora_dropout import LightDropoutLinear

        LightDropoutLinear.in_compiled = os.environ["QK_BENCH_LIGHT_COMPILED"] == "1"
    if os.environ.get("QK_BENCH_COMPILE_MODE"):  # experiment: torch.compile's mode for the decoder layers
        import qlora_kit.training.compiling as compiling

        compiling.COMPILE_MODE = os.environ["QK_BENCH_COMPILE_MODE"]
    if os.environ.get("QK_BENCH_RNG_RECOMPUTE") == "1":  # experiment: dropout masks recomputed, not saved
        import torch._functorch.config as functorch_config

        functorch_config.functionalize_rng_ops = True
    return OursSession(model_dir, device, spec["overrides"], optimizer=spec["optimizer"])


def run_w2(spec: dict[str, Any], session: Any) -> dict[str, Any]:
    """Median step time after warm-up on fixed-length random rows, memory, MFU, proof of training."""
    from bench_common import flops_per_token, memory, mfu, reset_peak, token_rows

    batch, seq, warmup, steps = spec["batch"], spec["seq"], spec["warmup"], spec["steps"]
    rows = token_rows(batch * (warmup + steps), seq, spec["row_vocab"], distinct=batch)
    reset_peak(session.device)
    log = session.train(rows, batch, warmup + steps)
    summary = log.summary(warmup, batch * seq)
    return {
        **summary, "train_seconds": round(sum(log.seconds), 3), **memory(session.device),
        "mfu": mfu(summary["tokens_per_s"], session.config, seq, session.device),
        "flops_per_token": round(flops_per_token(session.config, seq)),
    }  # fmt: skip


def run_w3(spec: dict[str, Any], session: Any, result_file: str) -> dict[str, Any]:
    """The W3 search (w3_probe.py), resumed from the spec's bracket after a restart."""
    from bench_common import fake_oom_above, mfu
    from w3_probe import search, summarize

    w3 = spec["w3"]
    if spec.get("fake_oom_tokens"):
        fake_oom_above(session.model, spec["fake_oom_tokens"], spec.get("fake_broken_oom_tokens"))

    def partial(result: dict[str, Any]) -> None:
        write(result_file, {"status": "partial", **result})

    # written first: a worker restarted before its first probe still passes on the bracket it was given
    partial(summarize(w3.get("lo", 0), w3.get("hi"), "running", w3.get("probes") or []))

    found = search(session, vocab=spec["row_vocab"], start=w3["start"], resolution=w3["resolution"],
                   cap=w3["cap"], steps=w3["steps"], deadline=spec["deadline"], lo=w3.get("lo", 0),
                   hi=w3.get("hi"), probes=w3.get("probes"), on_probe=partial)  # fmt: skip
    if found["max_seq"]:
        found["mfu"] = mfu(found["tokens_per_s"], session.config, found["max_seq"], session.device)
    return found


def run_w1(spec: dict[str, Any]) -> dict[str, Any]:
    """seed_w1.py (qlora_kit) or w1_peer_trl.py (the seed's TRL recipe) in a child process."""
    w1 = spec["w1"]
    common = ["--tokenizer", w1["tokenizer"], "--data", w1["data"], "--work-dir", w1["work_dir"]]
    steps = ["--max-steps", str(w1["max_steps"])] if w1.get("max_steps") else []
    steps += ["--heldout", str(w1["heldout"])] if w1.get("heldout") is not None else []
    shutil.rmtree(Path(w1["work_dir"]) / "run", ignore_errors=True)  # an earlier call's run: start afresh
    if spec["base"] == "trl_seed":
        command = [sys.executable, str(HERE / "w1_peer_trl.py"), *common, *steps]
    else:
        command = [sys.executable, str(HERE / "seed_w1.py"), *common, "--config", w1["config"], *steps,
                   *spec["overrides"]]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{Path(command[1]).name} exited {done.returncode}: {done.stdout[-500:]}")
    out = json.loads(lines[-1])
    return {
        "train_seconds": out["train_seconds"], "command_seconds": out.get("command_seconds"),
        "heldout_loss": out.get("heldout_response_loss"),
        "peak_gib": out.get("peak_cuda_memory_gb", out.get("peak_mem_gib")),
        "steps": out.get("steps", out.get("optimizer_steps")), "loss_last": out.get("train_loss"),
        "detail": out,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    if spec["base"] == "unsloth":
        from peers.unsloth_peer import import_unsloth

        import_unsloth()  # before transformers and peft, as Unsloth requires
    from bench_common import versions
    from w3_probe import RESTART, NeedsRestart

    result: dict[str, Any] = {"versions": versions(), "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    try:
        if spec["workload"].startswith("W1"):
            result.update(run_w1(spec), device_name=_device_name(spec["device"]))
        else:
            started = time.perf_counter()
            session = make_session(spec)
            result.update(load_seconds=round(time.perf_counter() - started, 2), config=session.knobs(),
                          device_name=_device_name(spec["device"]))  # fmt: skip
            if spec["workload"] == "W3":
                result.update(run_w3(spec, session, args.result))
            else:
                result.update(run_w2(spec, session))
            result["config"] = session.knobs()  # again: some settings resolve only when training starts
    except NeedsRestart as exc:
        previous = (
            json.loads(Path(args.result).read_text(encoding="utf-8")) if Path(args.result).exists() else {}
        )
        write(
            args.result,
            {**previous, **result, "status": "restart", "restart_seq": exc.seq, "error": str(exc)},
        )
        return RESTART
    except Exception as exc:
        traceback.print_exc()
        write(args.result, {**result, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:1000]})
        return 1
    write(args.result, {**result, "status": "ok"})
    return 0


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
