"""The tokenizer's pad token and the embedding rows it may need."""

from __future__ import annotations

import logging
from typing import Any

import torch

from qlora_kit.errors import ModelLoadError

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"


def apply_pad_policy(tokenizer: Any, policy: str) -> None:
    """Give ``tokenizer`` a pad token per `model.pad_token` when it has none.

    `add` adds ``<|pad|>`` (the model then needs :func:`fit_embeddings_to_tokenizer`), `eos`/`unk`
    reuse that token (safe here: labels come from the formatter's segments, never from pad ids), and
    `keep` requires the tokenizer to have one.

    Raises:
        ModelLoadError: `keep` without a pad token, or `eos`/`unk` when that token does not exist.
    """
    if tokenizer.pad_token is not None:
        return
    if policy == "add":
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    elif policy in ("eos", "unk"):
        token = getattr(tokenizer, f"{policy}_token")
        if token is None:
            raise ModelLoadError(f"model.pad_token={policy}: the tokenizer has no {policy} token; use `add`")
        tokenizer.pad_token = token
    else:
        raise ModelLoadError(
            "model.pad_token=keep: the tokenizer has no pad token; use `add`, `eos` or `unk`"
        )


def fit_embeddings_to_tokenizer(model: Any, tokenizer: Any) -> bool:
    """Grow the input embeddings (and a tied or untied output head) when the tokenizer has more
    tokens than the embedding matrix has rows; set the model's pad id. Returns whether it resized.

    Only the missing rows are added (no rounding up), each set to the mean of the existing rows:
    deterministic, so every load of the same base (training, export, generation) gets the same
    matrix; transformers' own mean resizing samples them at random. In a 4-bit model the embeddings
    and output head are never quantized, so this works there too, and tied weights stay tied. The
    new row stays frozen unless the embeddings are in `adapter.modules_to_save`; that is harmless for
    a pad token, which is masked out of attention and labels. The base's shape has changed, though:
    an adapter trained on it loads only on a base resized the same way (as ModelLoader does).
    """
    rows = model.get_input_embeddings().weight.shape[0]
    resized = len(tokenizer) > rows
    if resized:
        logger.info("resizing token embeddings %d -> %d for added tokens", rows, len(tokenizer))
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        matrices = {
            id(m.weight): m.weight
            for m in (model.get_input_embeddings(), model.get_output_embeddings())
            if m is not None
        }
        with torch.no_grad():
            for weight in matrices.values():
                weight[rows:] = weight[:rows].float().mean(dim=0).to(weight.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return resized
