"""W3: the longest sequence (batch 1) a system trains without running out of memory.

Design: the model is loaded ONCE and probed in increasing order (doubling from ``start``, then
bisecting between the longest length that trained and the shortest that ran out of memory, down to
``resolution`` tokens), each probe being ``steps`` optimizer steps at one length. Why this order:

- loading the 8B shape (reading 16 GB and quantizing) costs more than most probes, so a fresh process
  per probe would spend most of a 10-minute call loading;
- probing upward spends compute only on lengths up to twice the answer, while probing down from a
  "largest plausible" length pays for long failing steps (a 512k-token forward runs for minutes
  before it fails);
- an out-of-memory error in PyTorch is raised by the caching allocator before the kernel runs, so the
  process stays usable once the failed step's tensors are dropped (``free_after_oom``); the harness
  sets ``expandable_segments`` so a failed probe does not leave fragmentation that would make the next,
  shorter probe fail falsely. A failure that is not a clean ``torch.OutOfMemoryError`` (cuBLAS or a
  CUDA error mentioning memory) may leave the context broken: the probe reports it and exits with
  :data:`RESTART`, and the harness restarts the search in a fresh process from the bracket so far.

The search stops when the bracket is within ``resolution``, when the next length would pass ``cap``,
or when the next probe (its time extrapolated quadratically from the last one) would end after
``deadline``. ``max_seq_bound`` says which: ``oom`` (an upper bound was seen), ``cap`` or ``budget``
(the true limit may be higher).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench_common import free_after_oom, is_oom, memory, reset_peak, token_rows

RESTART = 75
"""Exit status of a W3 worker whose CUDA context may be broken; the harness starts a fresh one."""


class NeedsRestart(RuntimeError):
    """A memory failure that was not a clean ``torch.OutOfMemoryError``, at probe length ``seq``."""

    def __init__(self, message: str, seq: int):
        super().__init__(message)
        self.seq = seq


def _dirty_oom(exc: BaseException) -> bool:
    text = str(exc)
    return "out of memory" in text.lower() or "ALLOC_FAILED" in text


def next_length(lo: int, hi: int | None, start: int, resolution: int, cap: int) -> int | None:
    """The next length to probe, or None when the search is done.

    ``lo``: longest length that trained (0: none yet); ``hi``: shortest that ran out of memory.
    """
    if hi is None:
        length = lo * 2 if lo else start
        if length > cap:
            return cap if lo < cap else None
        return length
    if hi - lo <= resolution:
        return None
    mid = lo + max(resolution, (hi - lo) // 2 // resolution * resolution)
    return mid if mid < hi else None


def probe(session: Any, length: int, vocab: int, steps: int) -> dict[str, Any]:
    """``steps`` optimizer steps on one row of ``length`` tokens; peak memory and the last step's time."""
    reset_peak(session.device)
    rows = token_rows(steps, length, vocab, seed=length)
    out_of_memory = False
    try:
        log = session.train(rows, 1, steps)
    except Exception as exc:
        if not is_oom(exc):
            if _dirty_oom(exc):
                raise NeedsRestart(str(exc)[:300], length) from exc
            raise
        out_of_memory = True
    if out_of_memory:  # outside the except block: the traceback's frames (and their activations) are gone
        free_after_oom(session.model, session.device)
        return {"seq": length, "ok": False, **memory(session.device)}
    return {"seq": length, "ok": True, "s_per_step": round(log.seconds[-1], 3),
            "loss": log.losses[-1] if log.losses else None,
            "grad_norm": log.grad_norms[-1] if log.grad_norms else None, **memory(session.device)}  # fmt: skip


def search(session: Any, *, vocab: int, start: int, resolution: int, cap: int, steps: int, deadline: float,
           lo: int = 0, hi: int | None = None, probes: list[dict[str, Any]] | None = None,
           on_probe: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:  # fmt: skip
    """Run the search (see the module docstring); ``lo``/``hi``/``probes`` resume an earlier one.

    ``on_probe`` gets the partial result after every probe (the worker writes it to disk, so a killed
    or restarted search keeps what it found).
    """
    probes = list(probes or [])
    bound = "oom" if hi is not None else "cap"
    while (length := next_length(lo, hi, start, resolution, cap)) is not None:
        last_ok = next((p for p in reversed(probes) if p["ok"]), None)
        if last_ok and time.time() + _estimate(last_ok, length, steps) > deadline:
            bound = "budget"
            break
        result = probe(session, length, vocab, steps)
        probes.append(result)
        if result["ok"]:
            lo = length
        else:
            hi, bound = length, "oom"
        on_probe(summarize(lo, hi, "running", probes))
    if hi is None and bound != "budget":
        bound = "cap"
    return summarize(lo, hi, bound, probes)


def _estimate(last_ok: dict[str, Any], length: int, steps: int) -> float:
    # attention makes time up to quadratic in length; plus a few seconds of per-probe overhead
    return steps * last_ok["s_per_step"] * (length / last_ok["seq"]) ** 2 + 5.0


def summarize(lo: int, hi: int | None, bound: str, probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The W3 fields: ``max_seq`` and its probe's memory and step time, the bracket, every probe."""
    best = next((p for p in probes if p["ok"] and p["seq"] == lo), None)
    return {
        "max_seq": lo or None, "max_seq_bound": bound, "first_oom_seq": hi,
        "peak_gib": best and best["peak_gib"], "peak_reserved_gib": best and best["peak_reserved_gib"],
        "s_per_step": best and best["s_per_step"],
        "tokens_per_s": best and round(lo / best["s_per_step"], 1),
        "loss_first": next((p["loss"] for p in probes if p["ok"]), None),
        "loss_last": best and best["loss"], "grad_norm": best and best["grad_norm"],
        "probes": probes,
    }  # fmt: skip
