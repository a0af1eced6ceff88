"""Where a training run's wall time goes outside its steady steps: a timeline of one ``Trainer.fit``.

    python benchmarks/fit_timeline.py [--out FILE] -- train CONFIG [OVERRIDES ...]
    python benchmarks/fit_timeline.py -- quickstart [ARGS ...]
    python benchmarks/fit_timeline.py --w1 [--w1-data F --w1-tokenizer DIR] -- [OVERRIDES ...]

Runs a ``qlora-kit`` command in this process with marks (seconds since ``fit`` began, on the host's clock,
never synchronising the device: the run keeps its own overlap) at: the session's setup and the layers'
speed-ups, each evaluation and checkpoint (start and end), the end of steps 1-5, every 50th and the last
step, and the teardown (logs closed, loss curve drawn). Steps end when the host has queued them; an
evaluation, a log line or a checkpoint waits for the device, so the marks after one are device time too.
``benchmarks/step_phases.py`` splits a steady step; this is for what is around the steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_phases import SHARED, w1_arguments  # noqa: E402


class Timeline:
    """Marks on one clock, from the first ``fit`` on."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.marks: list[tuple[float, str]] = []
        self.steps = 0

    def mark(self, what: str) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        self.marks.append((now - self.start, what))

    def around(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` with a mark before (``name`` start) and after (``name`` end) each call."""

        def marked(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"{name} start")
            try:
                return function(*args, **kwargs)
            finally:
                self.mark(f"{name} end")

        return marked

    def step_marker(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """The loop's step, marked at its end for the first five steps and every 50th."""

        def marked(trainer: Any, s: Any, window: Any) -> None:
            step(trainer, s, window)
            self.steps += 1
            if self.steps <= 5 or self.steps % 50 == 0 or self.steps == s.state.total_steps:
                self.mark(f"step {self.steps} queued")

        return marked

    def lines(self) -> list[str]:
        out, previous = [], 0.0
        for seconds, what in self.marks:
            out.append(f"{seconds:8.3f} s  (+{seconds - previous:6.3f})  {what}")
            previous = seconds
        return out


def instrument(timeline: Timeline) -> Callable[[], None]:
    """Mark the Trainer's and the session's phases; returns the function that puts them back."""
    from qlora_kit.training import loop, session

    patches = [
        (loop.Trainer, "fit", timeline.around("fit", loop.Trainer.fit)),
        (session.TrainingSession, "__init__", timeline.around("session setup", session.TrainingSession.__init__)),
        (session, "speed_up_layers", timeline.around("speed_up_layers", session.speed_up_layers)),
        (loop.Trainer, "_evaluate", timeline.around("evaluation", loop.Trainer._evaluate)),
        (loop.Trainer, "_save", timeline.around("checkpoint", loop.Trainer._save)),
        (loop.Trainer, "_finish", timeline.around("finish", loop.Trainer._finish)),
        (session.TrainingSession, "close", timeline.around("close (logs, loss curve)", session.TrainingSession.close)),
        (loop.Trainer, "_step", timeline.step_marker(loop.Trainer._step)),
    ]  # fmt: skip
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)

    def restore() -> None:
        for owner, name, original in originals:
            setattr(owner, name, original)

    return restore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the marks here as JSON")
    parser.add_argument("--w1", action="store_true", help="time W1 (seed_improved.yaml on the 900 rows)")
    parser.add_argument("--w1-data", default=str(SHARED / "data" / "alpaca_en_demo.json"))
    parser.add_argument("--w1-tokenizer", default=str(SHARED / "assets" / "gpt2-tokenizer"))
    parser.add_argument("--no-lean-forward", action="store_true",
                        help="A/B: the model's own GELU and float32 norm outputs (qlora_kit.model.activations)")  # fmt: skip
    parser.add_argument("--no-lean-norms", action="store_true",
                        help="A/B: the fused GELU only, norms returning float32 (qlora_kit.model.norms)")  # fmt: skip
    parser.add_argument("command", nargs="*", help="after --: the qlora-kit command and its arguments")
    args = parser.parse_args(argv)
    if args.no_lean_norms:
        from qlora_kit.model import norms

        norms.NORMS = ()
    if args.no_lean_forward:
        from torch.nn import Module

        from qlora_kit.model.activations import LeanForward
        from qlora_kit.training import session

        session.lean_forward = lambda model, autocast: LeanForward(Module())  # nothing to change
    command = ["train", *w1_arguments(args), *args.command] if args.w1 else args.command
    if not command:
        parser.error("give a qlora-kit command after --, or --w1")
    timeline = Timeline()
    restore = instrument(timeline)
    from qlora_kit.cli import main as cli

    try:
        code = cli(command)
    finally:
        restore()
    print("\n".join(timeline.lines()))
    if args.out:
        marks = [{"seconds": round(s, 4), "mark": m} for s, m in timeline.marks]
        Path(args.out).write_text(json.dumps(marks, indent=1) + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
