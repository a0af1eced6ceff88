"""What a resumed run may change, in one place.

A run resumes from a checkpoint only with the same model, quantization, adapter, data and batching:
anything else would silently train something other than what the checkpoint holds. These may change
on resume, for example to lower the learning rate after a non-finite loss, or to extend a finished run:

- ``train.optimizer.lr`` and ``train.optimizer.weight_decay`` (the schedule's peak is the new value);
- ``train.epochs`` and ``train.max_steps`` (the schedule is recomputed for the new total number of
  steps, so a linear or cosine decay stretches from the step the run resumes at);
- ``train.max_grad_norm``; ``train.loss``, ``train.grad_checkpointing``, ``train.activation_offload``,
  ``train.micro_batch_tokens``, ``train.memory_budget_gib`` and ``data.packing`` (the same steps and
  numbers, computed another way);
- evaluation, checkpoint and logging cadence: ``train.eval_every``, ``train.eval_batch_size``,
  ``train.save_every``, ``train.keep_last``, ``train.log_every``, ``train.generation_prompts``,
  ``train.trackers``, ``train.callbacks``, ``train.resume``, ``train.eval_at_start``;
- ``data.source.path`` and ``data.eval.source.path`` (a moved file: the rows themselves are checked by a
  hash of their tokens, so different data is refused however it is named);
- ``export`` (what is written after training), ``output_dir``, ``plugins``, ``model.cache_dir``.
"""

from __future__ import annotations

from typing import Any

RESUMABLE_CHANGES = (
    "train.optimizer.lr",
    "train.optimizer.weight_decay",
    "train.epochs",
    "train.max_steps",
    "train.max_grad_norm",
    "train.loss",
    "train.grad_checkpointing",
    "train.micro_batch_tokens",
    "data.packing",
    "train.activation_offload",
    "train.compile",
    "train.memory_budget_gib",
    "train.eval_every",
    "train.eval_batch_size",
    "train.save_every",
    "train.keep_last",
    "train.log_every",
    "train.generation_prompts",
    "train.eval_at_start",
    "train.trackers",
    "train.callbacks",
    "train.resume",
    "data.source.path",
    "data.eval.source.path",
    "export",
    "output_dir",
    "plugins",
    "model.cache_dir",
)
"""Dotted config paths (and everything under them) that may differ between a checkpoint and its resume."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples become lists (JSON and YAML do not tell them apart)."""
    flat: dict[str, Any] = {}
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): list(tree) if isinstance(tree, tuple) else tree}


def _may_change(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in RESUMABLE_CHANGES)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(conflicts, changes)`` between two config dumps: ``path: old -> new`` lines for fields a
    resume must not change, and for fields it may change."""
    a, b = flatten(old), flatten(new)
    conflicts, changes = [], []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
            (changes if _may_change(key) else conflicts).append(line)
    return conflicts, changes
