"""Where a training step's time goes: the loop's phases timed one by one, on any device.

    python benchmarks/step_phases.py [--skip N] [--out FILE] -- CONFIG [OVERRIDES ...]
    python benchmarks/step_phases.py --w1 [--w1-data F --w1-tokenizer DIR] -- [OVERRIDES ...]

Runs ``qlora-kit train`` with the Trainer's phases wrapped: collating a window, each pass's forward and
loss, its backward, gradient clipping, the optimizer step, zeroing the gradients, the schedule, and what
runs between steps (logging, evaluation, checkpoints). Each phase synchronises the device before and after
(``torch.cuda.synchronize``), so its time is the host's and the device's work of that phase alone; the
step then takes longer than unsynchronised (host and device no longer overlap), and "unattributed" is
what the loop does outside the wrapped calls. It is for attribution, not for speed: the harness measures
speed. Why not torch.profiler: on the GPU machine its post-processing of a few steps took minutes, and
cProfile loses the call tree under dynamo's frame hooks (benchmarks/RESULTS.md, call 32).

Prints one line per phase (ms per step, share of the step) after the first ``--skip`` steps (recording,
compilation and allocator warm-up), and writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT  # noqa: E402
from seed_w1 import SHARED, prepare  # noqa: E402


class PhaseClock:
    """Synchronised timings of named phases, counted from step ``skip`` on. Phases inside a step (forward,
    backward, ...) count only while a training step runs: evaluation calls the same loss function."""

    OUTSIDE = ("collate", "between steps")
    """Phases the loop runs outside :meth:`Trainer._step`."""
    INSIDE_PREFIX = "> "
    """Phases timed inside another phase (part of forward + loss), left out of the step's sum."""

    def __init__(self, device: torch.device, skip: int):
        self.device, self.skip = device, skip
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.step_seconds = 0.0
        self.in_step = False

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, timed as phase ``name``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            started = time.perf_counter()
            result = function(*args, **kwargs)
            self.sync()
            counted = self.in_step or name in self.OUTSIDE
            if counted and self.steps >= self.skip:
                self.seconds[name] += time.perf_counter() - started
            return result

        return timed

    def report(self) -> dict[str, Any]:
        """Milliseconds per timed step for each phase; "unattributed" is the rest of the step itself."""
        timed = max(self.steps - self.skip, 1)
        phases = {name: 1000 * s / timed for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        step_ms = 1000 * self.step_seconds / timed
        phases["unattributed"] = step_ms - sum(
            v for k, v in phases.items() if k not in self.OUTSIDE and not k.startswith(self.INSIDE_PREFIX)
        )
        total = step_ms + sum(phases.get(k, 0.0) for k in self.OUTSIDE)
        return {"timed_steps": timed, "step_ms": step_ms, "per_step_ms": total, "phases_ms": phases}


def instrument(clock_holder: dict[str, PhaseClock], skip: int, kernels: int = 0) -> Callable[[], None]:
    """Wrap the Trainer's loop so that every run it makes is timed by phase (kept in ``clock_holder``);
    returns the function that puts the loop back. ``kernels``: also run torch.profiler over that many steps
    after the skipped ones (kept as ``clock_holder["profile"]``)."""
    from qlora_kit.training import loop

    original_train, original_step = loop.Trainer._train, loop.Trainer._step

    def train(self: Any, s: Any, eval_data: Any, stop: Any) -> None:
        clock = clock_holder["clock"] = PhaseClock(s.device, skip)
        acc = s.accelerator
        s.collate = clock.wrap("collate", s.collate)
        s.loss_fn = clock.wrap("forward + loss", s.loss_fn)
        acc.backward = clock.wrap("backward", acc.backward)
        acc.clip_grad_norm_ = clock.wrap("clip", acc.clip_grad_norm_)
        s.optimizer.step = clock.wrap("optimizer", s.optimizer.step)
        s.optimizer.zero_grad = clock.wrap("zero_grad", s.optimizer.zero_grad)
        s.scheduler.step = clock.wrap("schedule", s.scheduler.step)
        self._between_steps = clock.wrap("between steps", self._between_steps)
        original_train(self, s, eval_data, stop)

    def step(self: Any, s: Any, window: Any) -> None:
        clock = clock_holder["clock"]
        clock.sync()
        if kernels and clock.steps == clock.skip:
            clock_holder["profile"] = _start_profiler()
        started = time.perf_counter()
        clock.in_step = True
        try:
            original_step(self, s, window)
        finally:
            clock.in_step = False
        clock.sync()
        if kernels and clock.steps == clock.skip + kernels - 1:
            clock_holder["profile"].stop()
        if clock.steps >= clock.skip:
            clock.step_seconds += time.perf_counter() - started
        clock.steps += 1

    loop.Trainer._train, loop.Trainer._step = train, step
    undo_inner = _instrument_forward(clock_holder)

    def restore() -> None:
        loop.Trainer._train, loop.Trainer._step = original_train, original_step
        undo_inner()

    return restore


def _start_profiler() -> Any:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profiler = profile(activities=activities)
    profiler.start()
    return profiler


def print_kernels(profiler: Any, steps: int, rows: int = 20) -> None:
    """The profiled steps' operators, by time on the device and by time on the host (per step)."""
    events = profiler.key_averages()
    on_device = torch.cuda.is_available()
    for key in (["self_device_time_total"] if on_device else []) + ["self_cpu_time_total"]:
        print(f"top operators by {key} (ms per step; calls per step):")
        for e in sorted(events, key=lambda e: -getattr(e, key))[:rows]:
            print(f"  {getattr(e, key) / 1000 / steps:8.3f}  {e.count / steps:7.1f}  {e.key[:90]}")
    launches = sum(
        e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch")
    )
    print(f"kernel and graph launches per step: {launches / steps:.0f}")


def _instrument_forward(clock_holder: dict[str, PhaseClock]) -> Callable[[], None]:
    """Time two parts of "forward + loss" apart: the model without its head (the head-split losses) and,
    inside it, the attention mask transformers builds before the decoder layers."""
    import transformers.masking_utils as masking
    from transformers.models.gpt2 import modeling_gpt2
    from transformers.models.llama import modeling_llama

    from qlora_kit.training import head_loss

    def lazily(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            clock = clock_holder.get("clock")
            if clock is None:
                return function(*args, **kwargs)
            return clock.wrap(PhaseClock.INSIDE_PREFIX + name, function)(*args, **kwargs)

        return timed

    patched = [(head_loss, "final_hidden_states", "model without head")]
    patched += [(m, "create_causal_mask", "attention mask") for m in (masking, modeling_gpt2, modeling_llama)]
    originals = [(module, attr, getattr(module, attr)) for module, attr, _ in patched]
    for (module, attr, name), (_, _, original) in zip(patched, originals, strict=True):
        setattr(module, attr, lazily(name, original))

    def undo() -> None:
        for module, attr, original in originals:
            setattr(module, attr, original)

    return undo


def w1_arguments(args: argparse.Namespace) -> list[str]:
    """``qlora-kit train`` arguments for W1 (seed_improved.yaml on the benchmark's 900 rows), preparing the
    model and data as ``benchmarks/seed_w1.py`` does."""
    work = Path(tempfile.mkdtemp(prefix="step-phases-w1-"))
    model_dir, train, _ = prepare(work, args.w1_tokenizer, args.w1_data, 99)
    n_train = len(json.loads(train.read_text(encoding="utf-8")))
    return [str(ROOT / "examples" / "configs" / "seed_improved.yaml"), f"model.name_or_path={model_dir}",
            f"data.source.path={train}", f"data.subset.n={n_train}", f"output_dir={work / 'run'}",
            "export.kind=adapter"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", type=int, default=5, help="steps left out of the timings (warm-up)")
    parser.add_argument("--out", help="write the timings here as JSON")
    parser.add_argument("--kernels", type=int, default=0, help="profile this many steps: operator tables")
    parser.add_argument("--w1", action="store_true", help="time W1 (seed_improved.yaml on the 900 rows)")
    parser.add_argument("--w1-data", default=str(SHARED / "data" / "alpaca_en_demo.json"))
    parser.add_argument("--w1-tokenizer", default=str(SHARED / "assets" / "gpt2-tokenizer"))
    parser.add_argument("train_args", nargs="*", help="after --: CONFIG and dotted overrides")
    args = parser.parse_args(argv)
    train_args = [*w1_arguments(args), *args.train_args] if args.w1 else args.train_args
    if not train_args:
        parser.error("give a config after --, or --w1")
    holder: dict[str, PhaseClock] = {}
    restore = instrument(holder, args.skip, args.kernels)
    from qlora_kit.cli import main as cli

    try:
        code = cli(["train", *train_args])
    finally:
        restore()
    if "clock" not in holder:
        return code or 1
    report = holder["clock"].report()
    print(f"per step: {report['per_step_ms']:.1f} ms, of it the step itself {report['step_ms']:.1f} ms "
          f"(synchronised phases; {report['timed_steps']} steps timed)")  # fmt: skip
    for name, ms in report["phases_ms"].items():
        print(f"  {name:<16} {ms:8.2f} ms  {100 * ms / max(report['per_step_ms'], 1e-9):5.1f}%")
    if "profile" in holder:
        print_kernels(holder["profile"], args.kernels)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
