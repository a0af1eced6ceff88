"""Public test kit: tiny models, a tokenizer, rows and a GGUF file built in code (no network, no files),
the formatter contract check, and a pytest plugin (:mod:`qlora_kit.testing.plugin`) with fixtures.

Use it to test your own formatter or plugin the way the library tests itself::

    from qlora_kit.testing import make_tokenizer, make_tiny_llama, make_alpaca_rows
"""

from qlora_kit.testing.kit import (
    EOS_TOKEN,
    adapter_tensors,
    check_formatter,
    checkpoint_tensors,
    lora_step,
    make_alpaca_rows,
    make_distilgpt2_shape,
    make_tiny_gguf,
    make_tiny_llama,
    make_tokenizer,
    perturb_lora,
)

__all__ = [
    "adapter_tensors",
    "checkpoint_tensors",
    "lora_step",
    "EOS_TOKEN",
    "check_formatter",
    "make_alpaca_rows",
    "make_distilgpt2_shape",
    "make_tiny_gguf",
    "make_tiny_llama",
    "make_tokenizer",
    "perturb_lora",
]
