"""What the formatter base class needs to know about a tokenizer, probed once per tokenizer."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
_ANCHOR = "\n"
_CACHE: weakref.WeakKeyDictionary[Any, TokenizerInfo] = weakref.WeakKeyDictionary()


@dataclass
class TokenizerInfo:
    """Special-token behaviour of one tokenizer.

    Attributes:
        bos_id: Its BOS id (None if it has none).
        eos_id: Its EOS id (None if it has none).
        adds_bos: Its post-processor prepends BOS to encoded text.
        needs_anchor: Encoding a segment on its own changes its first token (SentencePiece-style
            tokenizers prepend a word-boundary marker to every encode call), so segments after the
            first are encoded behind an anchor that is then cut off.
    """

    bos_id: int | None
    eos_id: int | None
    adds_bos: bool
    needs_anchor: bool
    anchor_ids: list[int]

    def needs_bos(self, ids: list[int]) -> bool:
        """Whether ``ids`` (a whole example's tokens) must get BOS in front: the tokenizer adds one to
        text it encodes, and ``ids`` do not already start with it."""
        return self.adds_bos and (not ids or ids[0] != self.bos_id)

    def encode_segment(self, tokenizer: Any, text: str, first: bool) -> list[int]:
        """Token ids of ``text`` as it would be tokenized in the middle of a longer text."""
        if not text:
            return []
        if first or not self.needs_anchor:
            return _plain(tokenizer, text)
        ids = _plain(tokenizer, _ANCHOR + text)
        n = len(self.anchor_ids)
        return ids[n:] if ids[:n] == self.anchor_ids else _plain(tokenizer, text)


def _plain(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    """The (cached) :class:`TokenizerInfo` of ``tokenizer``."""
    try:
        return _CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    info = _probe(tokenizer)
    with contextlib.suppress(TypeError):  # not weak-referenceable: probe again next time
        _CACHE[tokenizer] = info
    return info


def _probe(tokenizer: Any) -> TokenizerInfo:
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    with_special = list(tokenizer("a")["input_ids"])
    plain = _plain(tokenizer, "a")
    adds_bos = bos_id is not None and len(with_special) > len(plain) and with_special[0] == bos_id
    anchor_ids = _plain(tokenizer, _ANCHOR)
    needs_anchor = _plain(tokenizer, _ANCHOR + "a")[len(anchor_ids) :] != plain
    return TokenizerInfo(bos_id, eos_id, adds_bos, needs_anchor, anchor_ids)


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS, else 0. Padded positions
    are neither attended to nor labels, so which id it is does not change any result."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0
