"""The quickstart's task: reverse the order of a short list of words.

A deterministic transformation the base model does not do when asked (SmolLM2-135M-Instruct answers
with an explanation or the words in the wrong order) but a small adapter learns in a few dozen steps.
Rows are generated here, so the quickstart needs no dataset download; held-out rows never share their
word list with a training row, so held-out accuracy measures the transformation, not memorisation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "candle", "rocket", "garden",
    "window", "forest", "button", "orange", "pencil", "silver", "mountain", "coffee", "rabbit", "bridge",
    "violin", "castle", "shadow", "ocean", "dragon", "pepper", "ladder", "planet", "sugar", "jacket",
    "marble", "yellow", "kitten", "desert", "hammer", "circle", "engine", "blanket", "thunder",
)  # fmt: skip
INSTRUCTION = "Reverse the order of these words: "


def solve(words: Sequence[str]) -> str:
    """The correct answer for ``words``."""
    return " ".join(reversed(words))


def make_rows(n: int, seed: int, exclude: set[tuple[str, ...]] = frozenset(), min_words: int = 3,
              max_words: int = 6) -> list[dict[str, str]]:  # fmt: skip
    """``n`` distinct Alpaca-style rows ``{"instruction", "output"}``, none whose word list is in ``exclude``."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen = set(exclude)
    while len(rows) < n:
        words = tuple(rng.sample(WORDS, rng.randint(min_words, max_words)))
        if words in seen:
            continue
        seen.add(words)
        rows.append({"instruction": INSTRUCTION + " ".join(words), "output": solve(words)})
    return rows


def make_splits(
    train_rows: int, eval_rows: int, seed: int = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Held-out rows first (seed + 1), then training rows that never repeat a held-out word list."""
    held_out = make_rows(eval_rows, seed + 1)
    taken = {tuple(r["instruction"].removeprefix(INSTRUCTION).split()) for r in held_out}
    return make_rows(train_rows, seed, exclude=taken), held_out


def write_jsonl(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    """One JSON object per line (what `data.source.path` loads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference (surrounding whitespace ignored)."""
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / max(len(references), 1)
