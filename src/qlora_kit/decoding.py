"""Decoding already tokenized prompts: batched with left padding, greedy or sampled, cut at stop tokens.

Sampling follows the usual knobs (``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``); a
``seed`` makes a sampled completion reproducible without touching the caller's random state::

    complete(model, tokenizer, [ids], stops, sampling=Sampling(temperature=0.7, top_p=0.9, seed=1))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qlora_kit.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy by default (``temperature`` 0).

    Attributes:
        temperature: 0 picks the most likely token; above 0 samples from the softened distribution.
        top_p: Sample only from the smallest set of tokens whose probability adds up to ``top_p``.
        top_k: Sample only from the ``top_k`` most likely tokens (0: no limit).
        repetition_penalty: Divide the scores of tokens already in the text by this (1: off; greedy too).
        seed: Seed of the sampling, for a reproducible completion (None: the current random state).

    Raises:
        UsageError: a value out of range, or ``top_p``/``top_k`` without sampling (temperature 0).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        finite = math.isfinite(self.temperature) and math.isfinite(self.repetition_penalty)
        problems = [
            f"{name} {value!r} {rule}"
            for name, value, ok, rule in (
                ("temperature", self.temperature, finite and self.temperature >= 0, "must be >= 0"),
                ("top_p", self.top_p, 0 < self.top_p <= 1, "must be in (0, 1]"),
                ("top_k", self.top_k, self.top_k >= 0, "must be >= 0"),
                ("repetition_penalty", self.repetition_penalty, finite and self.repetition_penalty > 0,
                 "must be > 0"),
            )
            if not ok
        ]  # fmt: skip
        if self.temperature == 0 and (self.top_p < 1 or self.top_k > 0):
            problems.append("top_p and top_k choose among sampled tokens: set temperature > 0 (0 is greedy)")
        if problems:
            raise UsageError(f"sampling: {'; '.join(problems)}")

    @property
    def greedy(self) -> bool:
        """The most likely token every time (no randomness)."""
        return self.temperature == 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``model.generate``; every sampling knob is explicit, so the model's own
        ``generation_config`` (e.g. a ``top_k`` of 50) does not silently change the choice."""
        extra = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1 else {}
        if self.greedy:
            return {"do_sample": False, **extra}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                **extra}  # fmt: skip


def complete(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    stops: Sequence[int],
    *,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
) -> list[str]:
    """Completions of already tokenized prompts, batched with left padding, each cut at its first stop
    token (``stops``: the formatter's :meth:`~qlora_kit.formatting.PromptFormatter.stop_token_ids`).

    Args:
        sampling: How tokens are chosen (default: greedy). With a ``seed``, the same prompts in the same
            batches give the same completions; the global random state is left as it was.
    """
    from qlora_kit.formatting.tokens import pad_token_id
    from qlora_kit.training.evaluation import inference_mode

    sampling = sampling or Sampling()
    stops = list(stops)
    pad = pad_token_id(tokenizer)
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    devices = [device] if device.type == "cuda" else []
    with inference_mode(model), torch.random.fork_rng(devices=devices, enabled=sampling.seed is not None):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # seeds the CUDA generators too
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=stops, pad_token_id=pad, use_cache=True,
                             **sampling.generate_kwargs())  # fmt: skip
    texts = []
    for row in out[:, width:].tolist():
        cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return texts
