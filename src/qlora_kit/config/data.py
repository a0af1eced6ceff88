"""Config section of the data: source, subset, held-out split, prompt formatter, batching."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from qlora_kit.registry import formatters
from qlora_kit.strict import StrictModel

FormatterSpec = formatters.field_type("alpaca")
"""A `data.formatter` section: `{kind: <registered formatter>, <its options>}`."""

# ----------------------------------------------------------------------------------------- data


class SourceConfig(StrictModel):
    """A dataset: a hub name, a local json/jsonl/csv/parquet file, or rows given in memory."""

    path: str | None = None
    """Hub dataset name (`yahma/alpaca-cleaned`) or a local file/directory."""
    name: str | None = None
    """Hub dataset configuration name."""
    split: str = "train"
    """Split to load."""
    rows: list[dict[str, Any]] | None = None
    """Rows given directly (Python API, tests)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename columns to the names the formatter expects: `{formatter_field: dataset_column}`."""

    @model_validator(mode="after")
    def _one_origin(self) -> SourceConfig:
        if (self.path is None) == (self.rows is None):
            raise ValueError("give exactly one of `path` or `rows`")
        return self


class SubsetConfig(StrictModel):
    """The reference recipe's subset step: `shuffle(seed=seed).select(range(n))`."""

    n: int = Field(gt=0)
    """Rows to keep."""
    seed: int = 42
    """Shuffle seed."""


class EvalSplitConfig(StrictModel):
    """Held-out data: a fraction of the training source, or a separate source."""

    fraction: float | None = Field(default=None, gt=0, lt=1)
    """Fraction of the (subset) training rows held out."""
    source: SourceConfig | None = None
    """A separate evaluation dataset."""
    seed: int = 42
    """Seed of the held-out split."""

    @model_validator(mode="after")
    def _one_origin(self) -> EvalSplitConfig:
        if (self.fraction is None) == (self.source is None):
            raise ValueError("give exactly one of `fraction` or `source`")
        return self


class DataConfig(StrictModel):
    """Data loading, prompt formatting, truncation and batching."""

    source: SourceConfig = Field(default_factory=lambda: SourceConfig(path="yahma/alpaca-cleaned"))
    """The training data."""
    subset: SubsetConfig | None = None
    """Optional random subset of the source (the reference recipe takes 1,000 rows with seed 42)."""
    eval: EvalSplitConfig | None = None
    """Optional held-out split."""
    formatter: FormatterSpec = formatters.default("alpaca")
    """Prompt template: a registered formatter `kind` and its options (`qlora-kit schema --kinds`)."""
    train_on_inputs: bool = False
    """Also train on prompt tokens (the reference recipe does, since SFTTrainer trains on all text)."""
    max_length: int = Field(default=1024, gt=0)
    """Longest tokenized example."""
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    """What happens to longer examples: cut the response, drop the row, or fail."""
    padding: Literal["longest", "max_length"] = "longest"
    """Pad each batch to its longest row (multiple of 8) or always to `max_length` (seed parity)."""
    packing: bool | Literal["auto"] = "auto"
    """Padding-free batches: a pass's examples concatenated in one row, positions restarting, no attention
    across examples. `auto` (with `padding: longest` and an attention that keeps packed examples apart):
    each pass is packed when that removes at least 20% of its padded positions (always with flash
    attention's variable-length kernels), padded otherwise. Same loss either way."""
    pad_to_multiple_of: int | None = Field(default=None, gt=0)
    """Round each pass's length up to a multiple of this: a padded batch's width, a packed row's total
    (filled with one masked example). Default: 8 for padded batches, no rounding for packed rows. Fewer
    distinct shapes, which `train.cuda_graphs` records once each."""
    group_by_length: bool = False
    """Batch examples of similar length together (less padding), shuffled by group."""
    skip_bad_rows: bool = False
    """Skip rows with missing or non-string fields (counted in the data report) instead of failing."""

    @model_validator(mode="after")
    def _packing_has_no_padding(self) -> DataConfig:
        if self.packing is True and self.padding == "max_length":
            raise ValueError(
                "`packing: true` and `padding: max_length` contradict each other (packed batches have no "
                "padding); set data.packing: false to pad as the reference recipe does, or data.padding: longest"
            )
        return self
