"""``run(cfg)``: the whole QLoRA pipeline in straight lines you can copy and change.

load -> format + encode data (report written) -> k-bit prep -> LoRA -> train -> export -> summary.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"


@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes:
        output_dir: Where everything was written.
        train: The trainer's :class:`~qlora_kit.training.TrainResult` (losses, steps, time, memory).
        export: The exporter's :class:`~qlora_kit.export.ExportResult` (directories, merge report).
        data_report: The data pipeline's :class:`~qlora_kit.data.DataReport`.
        seconds: Wall time of the whole run (loading and export included).
        model: The trained PEFT model, still in memory (e.g. to evaluate it further).
        tokenizer: Its tokenizer.
        data: The :class:`~qlora_kit.data.DataBundle` it was trained and evaluated on.
    """

    output_dir: Path
    train: Any
    export: Any
    data_report: Any
    seconds: float
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)
    data: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON values (also written to ``summary.json``)."""
        t = self.train
        return {
            "output_dir": str(self.output_dir),
            "seconds": round(self.seconds, 2),
            "train_seconds": round(t.train_time_s, 2),
            "steps": t.steps,
            "train_loss": t.train_loss,
            "eval_loss": t.eval_loss,
            "eval_perplexity": t.eval_perplexity,
            "tokens": t.tokens,
            "supervised_tokens": t.supervised_tokens,
            "peak_cuda_memory_gb": t.peak_memory_gb,
            "peak_rss_gb": round(peak_rss_gb(), 3),
            "adapter_dir": str(self.export.adapter_dir) if self.export.adapter_dir else None,
            "merged_dir": str(self.export.merged_dir) if self.export.merged_dir else None,
            "merge_passed": None if self.export.merge_report is None else self.export.merge_report["passed"],
            "checkpoints": t.checkpoints,
            "resumed_from": t.resumed_from,
        }

    def summary(self) -> str:
        """A few human-readable lines: where things are, final losses, time, peak memory."""
        d, t = self.to_dict(), self.train
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        memory = (
            f"{d['peak_cuda_memory_gb']:.2f} GB CUDA"
            if d["peak_cuda_memory_gb"]
            else f"{d['peak_rss_gb']:.2f} GB RSS"
        )
        lines = [
            f"output:     {self.output_dir}",
            *([f"resumed:    from {t.resumed_from}"] if t.resumed_from else []),
            f"train loss: {fmt(t.train_loss)} ({last_window(t.history)})   eval loss: {fmt(t.eval_loss)}   "
            f"({t.steps} steps)",
            f"time:       {d['train_seconds']:.1f} s training, {d['seconds']:.1f} s in all   peak memory: {memory}",
            self.export.summary(),
        ]
        return "\n".join(lines)


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB (ru_maxrss is in KB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1e9 if sys.platform == "darwin" else 1e6)


def run(cfg: Any, overrides: Iterable[str] = (), *, overwrite: bool = False) -> RunResult:
    """Fine-tune per ``cfg`` (a RunConfig, a dict or a YAML/JSON path, plus dotted ``overrides``).

    Writes into ``cfg.output_dir``: ``run_config.yaml``, the data report, checkpoints, ``metrics.jsonl``,
    the export (``adapter/``, ``merged/``), ``summary.json``, ``manifest.json`` and the log ``train.log``.
    The directory must be new, or hold this run with ``train.resume`` set; ``overwrite`` replaces the run
    files already there. Each phase (data, model, train, export) logs a line when it starts and one with
    its result and time when it ends (:mod:`qlora_kit.phases`).
    """
    from accelerate.utils import set_seed

    from qlora_kit.compat import attn_implementation, fsdp_launched
    from qlora_kit.config.io import load_config, write_run_config
    from qlora_kit.console import run_log
    from qlora_kit.data import build_datasets, build_formatter, length_grouped_batches, make_collator
    from qlora_kit.export import ExportResult
    from qlora_kit.model import ModelLoader, prepare_for_training
    from qlora_kit.model.compute_dtype import resolve_run_config
    from qlora_kit.model.loading import resolve_device
    from qlora_kit.phases import phase
    from qlora_kit.rundir import open_run_dir
    from qlora_kit.training import Trainer
    from qlora_kit.training.distributed import check_fsdp_export, full_trainable_state
    from qlora_kit.training.resume import check_resume_data
    from qlora_kit.training.tracking import check_trackers

    started = time.perf_counter()
    # `auto` compute dtype made concrete first: the run directory's checks and run_config.yaml see it
    cfg = resolve_run_config(load_config(cfg, overrides), resolve_device(None))
    if fsdp_launched():  # a sharded run can write only what it can gather
        check_fsdp_export(cfg.export.kind)
    with open_run_dir(cfg, overwrite=overwrite) as run_dir:  # checked and locked before anything is written
        out = run_dir.path
        # train.log: the records held in memory so far, then the rest of the run
        with run_log(out) if run_dir.main else nullcontext():
            loader = ModelLoader(cfg.model, cfg.quant)
            # device, kernels, source, position limit: no weights read
            loader.check(max_length=cfg.data.max_length)
            check_trackers(cfg.train.trackers)
            with phase("data", describe_data(cfg)) as p:
                tokenizer = loader.load_tokenizer()
                formatter = build_formatter(cfg.data.formatter, tokenizer)
                # before the model: bad data fails fast, and its report is written first
                data = build_datasets(
                    cfg.data, formatter, tokenizer, micro_batch_size=cfg.train.micro_batch_size,
                    output_dir=out if run_dir.main else None,
                )  # fmt: skip
                p.result = data.report.headline()
            if run_dir.resuming:  # a checkpoint of other data is refused before the model loads
                check_resume_data(out, cfg.train.resume, data.train)
            with phase("model", describe_model(cfg)) as p:
                model, tokenizer = loader.load(tokenizer)
                model = prepare_for_training(model, cfg.train.grad_checkpointing)  # freezes the base
                set_seed(cfg.train.seed)  # the adapter's initial weights follow the seed, like all else
                model = cfg.adapter.build().apply(model)
                p.result = describe_parameters(model)
            trainer = Trainer(
                cfg.train,
                output_dir=out,
                collate_fn=make_collator(cfg.data, tokenizer, attn_implementation=attn_implementation(model)),
                batch_planner=length_grouped_batches if cfg.data.group_by_length else None,
                tokenizer=tokenizer,
                formatter=formatter,  # the generation panel's prompts are formatted as in training
            )
            if run_dir.main:
                write_run_config(cfg, out)  # the run starts: record exactly what it is
            with phase("train", describe_training(cfg)) as p:
                trained = trainer.fit(model, data.train, data.eval)
                p.result = describe_trained(trained)
            held_out = data.eval if data.eval is not None else data.train
            exported = ExportResult(kind=cfg.export.kind)  # written by the main process alone
            # FSDP: every process takes part in gathering the adapter from the shards; the main one writes it
            sharded = fsdp_launched() and cfg.export.kind == "adapter"  # the only kind FSDP runs write
            gathered = {"adapter_state": full_trainable_state(model)} if sharded else {}
            if run_dir.main:
                with phase("export", cfg.export.kind) as p:
                    exporter = cfg.export.build()
                    exported = exporter.export(model, tokenizer, out, cfg, verify_rows=held_out, **gathered)
                    written = [str(d) for d in (exported.adapter_dir, exported.merged_dir) if d]
                    p.result = ", ".join(written) or "nothing to write"
            result = RunResult(
                out, trained, exported, data.report, time.perf_counter() - started, model, tokenizer, data
            )
            if run_dir.main:
                write_summary(result)
        if run_dir.main:
            run_dir.finish(cfg)
    return result


def describe_data(cfg: Any) -> str:
    """What the data phase reads: the source and the formatter."""
    source = cfg.data.source
    where = source.path if source.path is not None else f"{len(source.rows or [])} rows given in memory"
    return f"{where}, {cfg.data.formatter.kind} formatter"


def describe_model(cfg: Any) -> str:
    """What the model phase loads: the base, how it is quantized, and the adapter."""
    quant = cfg.quant.kind + (f" {cfg.quant.quant_type}" if getattr(cfg.quant, "quant_type", None) else "")
    return f"{cfg.model.name_or_path} ({quant}), adapter {cfg.adapter.kind}"


def describe_parameters(model: Any) -> str:
    """Trainable parameters of the adapted model, and their share of all parameters."""
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return f"{trainable:,} trainable parameters of {total:,} ({trainable / max(total, 1):.2%})"


def describe_training(cfg: Any) -> str:
    """How long the run is and how a step is made."""
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epoch(s)"
    return f"{length}, micro batch {t.micro_batch_size} x {t.grad_accum} accumulated"


def describe_trained(trained: Any) -> str:
    """The trained run in one line: steps, the last logged losses."""
    parts = [f"{trained.steps} steps"]
    if trained.train_loss is not None:
        parts.append(f"train loss {trained.train_loss:.4f} ({last_window(trained.history)})")
    if trained.eval_loss is not None:
        parts.append(f"eval loss {trained.eval_loss:.4f}")
    return ", ".join(parts)


def last_window(history: list[dict[str, Any]]) -> str:
    """The steps the last logged train loss averages over: ``step 24`` or ``steps 21-24``."""
    steps = [r["step"] for r in history if "loss" in r]
    if not steps:
        return "no step logged"
    first = (steps[-2] + 1) if len(steps) > 1 else 1
    return f"step {steps[-1]}" if first >= steps[-1] else f"mean of steps {first}-{steps[-1]}"


def write_summary(result: RunResult, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``summary.json`` into the run's output dir."""
    from qlora_kit.files import atomic_write_json

    return atomic_write_json(result.output_dir / SUMMARY_FILE, {**result.to_dict(), **(extra or {})})
