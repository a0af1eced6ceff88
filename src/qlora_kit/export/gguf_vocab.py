"""The tokenizer part of a GGUF file, written the way llama.cpp's ``convert_hf_to_gguf.py`` writes it for a
GPT-2 style byte-level BPE vocabulary: tokens in id order, their types, the merges, the pre-tokenizer's
llama.cpp name, the special token ids, whether BOS/EOS are added, and the chat template."""

from __future__ import annotations

import json
from typing import Any

from qlora_kit.errors import ExportError

# llama.cpp token types (gguf.TokenType): NORMAL, CONTROL (special), USER_DEFINED (added), UNUSED (holes)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5
# Split regexes of pre-tokenizers llama.cpp knows by name (llama-vocab.cpp), as tokenizer.json spells them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
_SENTENCEPIECE = (
    "GGUF export writes GPT-2 style byte-level BPE tokenizers; this one is SentencePiece-style ({why}). "
    "Convert the merged/ directory with llama.cpp's convert_hf_to_gguf.py instead"
)


def backend_json(tokenizer: Any) -> dict[str, Any]:
    """The ``tokenizer.json`` of a fast tokenizer, checked to be byte-level BPE.

    Raises:
        ExportError: a slow (Python) tokenizer, or a SentencePiece-style one (Unigram, byte fallback,
            Metaspace pre-tokenizer), which llama.cpp stores differently (tokenizer model ``llama``).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"GGUF export needs a fast tokenizer; {type(tokenizer).__name__} has no tokenizer.json"
        )
    data = json.loads(backend.to_str())
    model = data["model"]
    if model["type"] != "BPE":
        raise ExportError(_SENTENCEPIECE.format(why=f"a {model['type']} model"))
    if model.get("byte_fallback"):
        raise ExportError(_SENTENCEPIECE.format(why="BPE with byte fallback"))
    if "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise ExportError(_SENTENCEPIECE.format(why=f"pre-tokenizer {data.get('pre_tokenizer')}"))
    return data


def llama_cpp_pre_tokenizer(data: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer of ``tokenizer.json`` ``data`` (``tokenizer.ggml.pre``):
    ``gpt-2`` (GPT-2's regex), ``smollm`` (single digits, then GPT-2's regex), ``llama-bpe`` or ``qwen2``.

    Raises:
        ExportError: another pre-tokenizer; llama.cpp would split text differently than training did.
    """
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = _SPLIT_NAMES.get((steps[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise ExportError(
        f"GGUF export: no llama.cpp pre-tokenizer matches this tokenizer's ({json.dumps(pre)[:200]}); "
        "pass pre_tokenizer=<llama.cpp name> if you know it"
    )


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order and their llama.cpp types, padded with ``[PAD{i}]`` (UNUSED) up to the model's
    ``vocab_size`` embedding rows, as llama.cpp's converter does."""
    if len(tokenizer) > vocab_size:
        raise ExportError(
            f"GGUF export: the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings"
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = tokenizer.added_tokens_decoder
    types = []
    for i, token in enumerate(tokens):
        if i in added:
            types.append(_CONTROL if added[i].special else _USER_DEFINED)
        else:
            types.append(_NORMAL if token is not None else _UNUSED)
    tokens = [token if token is not None else f"[PAD{i}]" for i, token in enumerate(tokens)]
    holes = range(len(tokens), vocab_size)
    return tokens + [f"[PAD{i}]" for i in holes], types + [_UNUSED] * len(holes)


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre_tokenizer: str | None = None) -> None:
    """Write the tokenizer metadata of ``tokenizer`` (for a model with ``vocab_size`` embedding rows)."""
    data = backend_json(tokenizer)
    tokens, types = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer or llama_cpp_pre_tokenizer(data))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
