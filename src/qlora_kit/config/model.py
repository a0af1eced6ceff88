"""Config section of the base model: where it comes from and how it is loaded.

How it is quantized (`quant`) and adapted (`adapter`) are component kinds: see :mod:`qlora_kit.model.quant`
and :mod:`qlora_kit.model.adapters`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qlora_kit.strict import StrictModel

# --------------------------------------------------------------------------------------- model


class ModelConfig(StrictModel):
    """Where the base model and its tokenizer come from."""

    name_or_path: str = "distilbert/distilgpt2"
    """Hub id, local directory, or a `.gguf` file (dequantized once, cached as safetensors)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    tokenizer: str | None = None
    """Tokenizer hub id or directory when it differs from `name_or_path`."""
    trust_remote_code: bool = False
    """Run code shipped with the model repository. Off unless you trust the source."""
    attn_implementation: (
        Literal["sdpa", "sdpa_varlen", "eager", "flash_attention_2", "flash_attention_3"] | None
    ) = None
    """Attention kernel. None (the default): transformers chooses (sdpa where available), and on a CUDA GPU
    with a 16-bit compute dtype qlora_kit switches an SDPA model to `sdpa_varlen`: SDPA, but packed training
    passes run flash attention's variable-length kernel, so packed examples cost their own lengths, not a
    block-diagonal mask over the whole pass. `sdpa` keeps plain SDPA; `sdpa_varlen` needs CUDA."""
    pad_token: Literal["keep", "eos", "unk", "add"] = "eos"
    """Pad-token policy when the tokenizer has none: reuse `eos` (safe here: labels come from the
    formatter's segments and padding is masked by length, so EOS is still trained), reuse `unk`, `add` a
    new `<|pad|>` token (resizes the embeddings: the adapter then needs a base resized the same way),
    or `keep` (error if there is no pad token)."""
    model_max_length: int | None = Field(default=None, gt=0)
    """Override the tokenizer's maximum length (e.g. 1024 for GPT-2)."""
    cache_dir: str | None = None
    """Where hub downloads and dequantized GGUF conversions are cached."""
