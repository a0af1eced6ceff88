"""Data pipeline: sources, formatting into input_ids/labels, truncation, collation, data report.

``build_datasets(cfg.data, build_formatter(cfg.data.formatter), tokenizer)`` gives a
:class:`DataBundle`; ``make_collator(cfg.data, tokenizer)`` the matching collator.
"""

from qlora_kit.data.collate import (
    IGNORE_INDEX,
    PACKING_ATTENTION,
    AutoPackCollator,
    PackedCollator,
    PaddedCollator,
    make_collator,
)
from qlora_kit.data.pipeline import DataBundle, build_datasets
from qlora_kit.data.report import DataReport, Efficiency
from qlora_kit.data.sampling import length_grouped_batches, length_grouped_order
from qlora_kit.formatting import build_formatter

__all__ = [
    "AutoPackCollator",
    "IGNORE_INDEX",
    "PACKING_ATTENTION",
    "DataBundle",
    "DataReport",
    "Efficiency",
    "PackedCollator",
    "PaddedCollator",
    "build_datasets",
    "build_formatter",
    "length_grouped_batches",
    "length_grouped_order",
    "make_collator",
]
