"""Loading rows: hub datasets and csv/parquet/data directories through `datasets`, JSON and JSON
lines parsed here (so a syntax error names its line), or rows given in memory; then column mapping,
the reference recipe's subset step and the held-out split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_kit.config import SourceConfig
from qlora_kit.errors import DataError, first_line

_DATASETS_FORMATS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}
_JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


@dataclass
class Rows:
    """Rows of one source, each with a description of where it came from (for error messages).

    Attributes:
        name: The source as the user gave it (file path, hub name or ``<rows>``).
        rows: The rows, as plain dicts.
        origins: ``origins[i]`` says where ``rows[i]`` came from, e.g. ``data.jsonl line 7``.
    """

    name: str
    rows: list[dict[str, Any]]
    origins: list[str]

    def take(self, indices: list[int]) -> Rows:
        """The rows at ``indices``, in that order."""
        return Rows(self.name, [self.rows[i] for i in indices], [self.origins[i] for i in indices])

    def columns(self) -> list[str]:
        """Every key seen in any row, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)


def load_source(source: SourceConfig) -> Rows:
    """Load a source's rows and apply its column mapping.

    Raises:
        DataError: Missing file, invalid JSON (with the line), a row that is not an object, a load
            failure from `datasets`, or a column mapping naming a column the data does not have.
    """
    if source.rows is not None:
        rows = Rows(
            "<rows>", [dict(r) for r in source.rows], [f"<rows> row {i}" for i in range(len(source.rows))]
        )
    else:
        rows = _load_path(source)
    return _map_columns(rows, source.columns)


def _load_path(source: SourceConfig) -> Rows:
    assert source.path is not None
    path = Path(source.path).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and suffix in _JSON_SUFFIXES:
        return _read_json(path)
    if path.exists():
        builder = _DATASETS_FORMATS.get(suffix) if path.is_file() else None
        if path.is_file() and builder is None:
            raise DataError(f"{path}: unsupported file type {suffix!r} (use json, jsonl, csv or parquet)")
        if builder in ("csv", "text"):
            _read_text(path)  # `datasets` would report a bad byte without its line
        return _from_datasets(str(path), builder, source)
    if suffix in _JSON_SUFFIXES or suffix in _DATASETS_FORMATS or source.path.startswith((".", "/", "~")):
        raise DataError(f"{source.path}: file not found (data.source.path)")
    return _from_datasets(source.path, None, source)


def _from_datasets(path: str, builder: str | None, source: SourceConfig) -> Rows:
    import datasets

    try:
        if builder is not None:
            dataset = datasets.load_dataset(builder, data_files=path, split="train")
        else:
            dataset = datasets.load_dataset(path, source.name, split=source.split)
    except Exception as exc:  # datasets raises many types (network, format, missing split)
        raise DataError(
            f"{path}: cannot load with `datasets` (split {source.split!r}): {_root_cause(exc)}"
        ) from exc
    rows = dataset.to_list()
    return Rows(path, rows, [f"{path} row {i}" for i in range(len(rows))])


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause (`datasets` wraps the real error in a generic one)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc)}"


def _read_text(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is named by line and byte offset (a BOM is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}: not valid UTF-8 at line {line}, byte {column} of the line (file offset {exc.start}: "
            f"{data[exc.start : exc.end]!r}); save the file as UTF-8"
        ) from None


def _read_json(path: Path) -> Rows:
    text = _read_text(path)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        # "Extra data" after the first value is what JSON lines look like to a whole-file parse.
        if exc.msg != "Extra data":
            raise DataError(
                f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        whole = None
    if isinstance(whole, list):
        data, origins = whole, [f"{path} row {i}" for i in range(len(whole))]
    elif whole is not None and len(text.strip().splitlines()) > 1:
        raise DataError(
            f"{path}: expected a JSON list of rows or one JSON object per line, got one {type(whole).__name__}"
        )
    else:  # JSON lines (also accepted in a .json file, as `datasets` does)
        data, origins = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: not valid JSON at line {number}, column {exc.colno}: {exc.msg}"
                ) from None
            origins.append(f"{path} line {number}")
    for row, origin in zip(data, origins, strict=True):
        if not isinstance(row, dict):
            raise DataError(f"{origin}: expected a JSON object per row, got {type(row).__name__}")
    return Rows(str(path), data, origins)


def _map_columns(rows: Rows, columns: dict[str, str]) -> Rows:
    if not columns:
        return rows
    present = rows.columns()
    for field, column in columns.items():
        if column not in present:
            raise DataError(
                f"{rows.name}: data.source.columns maps {field!r} to column {column!r}, which the data does not "
                f"have; columns are {present}"
            )
    mapped = []
    for row in rows.rows:
        row = dict(row)
        values = {field: row.pop(column, None) for field, column in columns.items()}
        row.update(values)
        mapped.append(row)
    return Rows(rows.name, mapped, rows.origins)


def check_columns(rows: Rows, fields: tuple[str, ...]) -> None:
    """Fail when a field the formatter reads is no column of the data (a wrong or missing mapping)."""
    present = rows.columns()
    missing = [f for f in fields if f not in present]
    if missing and rows.rows:
        hint = ", ".join(f"{f}: <column>" for f in missing)
        raise DataError(
            f"{rows.name}: the formatter reads {missing}, which the data does not have; columns are {present}. "
            f"Map them with data.source.columns: {{{hint}}}"
        )


def subset_indices(n_rows: int, n: int, seed: int) -> list[int]:
    """The rows the reference recipe's ``shuffle(seed=seed).select(range(n))`` keeps (computed by `datasets` itself)."""
    import datasets

    order = datasets.Dataset.from_dict({"i": list(range(n_rows))}).shuffle(seed=seed)
    return order.select(range(min(n, n_rows)))["i"]


def split_indices(n_rows: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and held-out row indices, as ``Dataset.train_test_split(test_size=fraction, seed=seed)``."""
    import datasets

    if n_rows < 2:
        raise DataError(f"cannot hold out a fraction of {n_rows} row(s) (data.eval.fraction)")
    split = datasets.Dataset.from_dict({"i": list(range(n_rows))}).train_test_split(
        test_size=fraction, seed=seed
    )
    return split["train"]["i"], split["test"]["i"]
