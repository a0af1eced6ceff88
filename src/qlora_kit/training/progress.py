"""Training progress for people: a bar on a terminal, plain periodic lines anywhere else.

Both show the loss from the first step (the mean of the steps since the last logged one) and an ETA
measured after the warm-up steps, whose time (compilation, allocator and kernel warm-up) says nothing
about the steps that follow. Redirected to a file, a bar would be one long line of carriage returns;
instead a line is written at the first step, every ``train.log_every`` steps and at the last step::

    train: step 12/24 (50%)  loss 5.9136  lr 1.30e-04  8,749 tok/s  eta 1.2 s  elapsed 1.3 s
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from qlora_kit.phases import duration, say

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2
"""Steps of each session left out of the ETA."""


def interactive(stream: Any = None) -> bool:
    """Whether progress can be drawn as a bar: a terminal, or a notebook (tqdm draws a widget there)."""
    stream = sys.stderr if stream is None else stream
    is_tty = getattr(stream, "isatty", None)
    return bool(is_tty and is_tty()) or "ipykernel" in sys.modules


class Eta:
    """Time left, from the pace of the steps after the first :data:`WARMUP_STEPS` of this session."""

    def __init__(self, total: int, start_step: int, warmup: int = WARMUP_STEPS):
        self.total, self.warmup_end = total, start_step + warmup
        self._mark: tuple[int, float] | None = None

    def update(self, step: int, now: float | None = None) -> None:
        """``step`` is done (at ``now``, default the current time)."""
        if self._mark is None and step >= self.warmup_end:
            self._mark = (step, time.perf_counter() if now is None else now)

    def seconds_left(self, step: int, now: float | None = None) -> float | None:
        """Estimated seconds to the last step; None until a step after the warm-up has been timed."""
        if self._mark is None or step <= self._mark[0]:
            return None
        now = time.perf_counter() if now is None else now
        per_step = (now - self._mark[1]) / (step - self._mark[0])
        return per_step * (self.total - step)


class TrainProgress:
    """What :class:`~qlora_kit.training.tracking.MetricsLogger` shows while training.

    Args:
        total: The run's optimizer steps.
        start_step: The step this session starts after (a resumed run's checkpoint).
        log_every: Steps between plain lines (``train.log_every``).
        enabled: False on the processes of a distributed run other than the main one.
        bar: Draw a bar (default: when stderr is a terminal or a notebook).
    """

    def __init__(
        self, total: int, start_step: int, log_every: int, enabled: bool = True, bar: bool | None = None
    ):
        self.total, self.start_step, self.log_every, self.enabled = total, start_step, log_every, enabled
        self.eta = Eta(total, start_step)
        self.started = time.perf_counter()
        self.step = start_step
        self.losses: list[float] = []
        self.lr: float | None = None
        self.tokens_per_s: float | None = None
        self.bar = None
        if enabled and (interactive() if bar is None else bar):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")  # fmt: skip

    @property
    def loss(self) -> float | None:
        """Mean loss of the steps since the last logged one (the last step's alone right after a log)."""
        return sum(self.losses) / len(self.losses) if self.losses else None

    def advance(self, loss: float | None) -> None:
        """One optimizer step done, with its loss (None: a step skipped without an update)."""
        self.step += 1
        self.eta.update(self.step)
        if loss is not None:
            self.losses.append(loss)
        if self.bar is not None:
            self.bar.set_postfix_str(self._fields(", "), refresh=False)
            self.bar.update(1)
        elif self.enabled and self.step == self.start_step + 1 and self.step % self.log_every:
            say(logger, self.line())  # the first step, so a redirected log shows the run has started

    def logged(self, record: dict[str, Any]) -> None:
        """A train record was logged: take its learning rate and throughput, and write a plain line."""
        self.lr, self.tokens_per_s = record.get("lr"), record.get("tokens_per_s")
        self.losses = [record["loss"]]  # shown until the next step
        if self.enabled:
            if self.bar is not None:  # the bar shows it; the run's log file still gets the line
                logger.debug(self.line())
                self.bar.set_postfix_str(self._fields(", "), refresh=False)
            else:
                say(logger, self.line())
        self.losses = []

    def evaluated(self, record: dict[str, Any]) -> None:
        """An evaluation was logged: one line with its loss (above the bar on a terminal)."""
        if self.enabled and "eval_loss" in record:
            perplexity = record.get("eval_perplexity")
            shown = f"  perplexity {perplexity:.4g}" if perplexity is not None else ""
            say(logger, f"eval: step {record['step']}  loss {record['eval_loss']:.4f}{shown}")

    def line(self) -> str:
        """The progress as one plain line."""
        percent = 100 * self.step / self.total if self.total else 100.0
        head = f"train: step {self.step}/{self.total} ({percent:.0f}%)"
        return f"{head}  {self._fields('  ')}  elapsed {duration(time.perf_counter() - self.started)}"

    def _fields(self, sep: str) -> str:
        fields = []
        if self.loss is not None:
            fields.append(f"loss {self.loss:.4f}")
        if self.lr is not None:
            fields.append(f"lr {self.lr:.2e}")
        if self.tokens_per_s is not None:
            fields.append(f"{self.tokens_per_s:,.0f} tok/s")
        left = self.eta.seconds_left(self.step)
        fields.append(f"eta {duration(left)}" if left is not None else "eta ?")
        return sep.join(fields)

    def close(self) -> None:
        """Close the bar (plain lines need no closing)."""
        if self.bar is not None:
            self.bar.close()
