"""The exact Python that loads an exported model, written into its model card (and run by the tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qlora_kit.errors import QloraKitError

_HEADER = """import torch
{imports}

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"

"""


def load_snippet(
    kind: str,
    path: str | Path,
    *,
    source: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    dtype: str = "bfloat16",
) -> str:
    """Python code that loads the exported model into ``model`` and its tokenizer into ``tokenizer``.

    Args:
        kind: ``adapter`` (the base loaded as it was trained, then the adapter), ``merged`` (a plain 16-bit
            model) or ``gguf`` (the GGUF file through transformers, which dequantizes it).
        path: The export directory (for ``gguf``, the `.gguf` file).
        source: For ``adapter``: the :func:`~qlora_kit.model.source.describe_source` of the base.
        quantization: For ``adapter``: the ``BitsAndBytesConfig`` keyword arguments the adapter was
            trained under (:func:`~qlora_kit.export.provenance.quantization_settings`); None for a
            16-bit base.
        dtype: dtype of the non-quantized parameters (the run's compute dtype) or of the merged model.

    Raises:
        QloraKitError: unknown ``kind``, or ``adapter`` without ``source``.
    """
    if kind == "adapter":
        if source is None:
            raise QloraKitError("load_snippet: kind adapter needs the base model's source")
        return _adapter_snippet(str(path), source, quantization, dtype)
    if kind == "merged":
        return _HEADER.format(imports="from transformers import AutoModelForCausalLM, AutoTokenizer") + (
            f"MERGED = {_py(str(path))}  # this folder (or its hub repo id once uploaded)\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(MERGED)\n"
            "model = AutoModelForCausalLM.from_pretrained(\n"
            f'    MERGED, dtype=torch.{dtype}, device_map={{"": DEVICE}}\n'
            ").eval()\n"
        )
    if kind == "gguf":
        path = Path(path)
        return _HEADER.format(imports="from transformers import AutoModelForCausalLM, AutoTokenizer") + (
            f"FOLDER, FILE = {_py(str(path.parent))}, {_py(path.name)}\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)\n"
            "# transformers dequantizes the GGUF tensors into ordinary weights of this dtype\n"
            "model = AutoModelForCausalLM.from_pretrained(\n"
            f'    FOLDER, gguf_file=FILE, dtype=torch.{dtype}, device_map={{"": DEVICE}}\n'
            ").eval()\n"
        )
    raise QloraKitError(f"load_snippet: unknown kind {kind!r}; known: adapter, merged, gguf")


def _adapter_snippet(
    path: str, source: dict[str, Any], quantization: dict[str, Any] | None, dtype: str
) -> str:
    imports = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if quantization is not None:
        imports[1] += ", BitsAndBytesConfig"
    base_lines, load_args = _base_lines(source)
    if source["kind"] == "gguf":
        imports.append("from qlora_kit.model.gguf import dequantize_gguf")
    lines = [
        f"ADAPTER = {_py(path)}  # this folder (or its hub repo id once uploaded)",
        *base_lines,
        "",
    ]
    if quantization is not None:
        lines += [
            "# The adapter was trained on this quantized base: load it the same way to get the trained model.",
            "# (quantization_config.json holds the same settings: BitsAndBytesConfig(**json.load(f)).)",
            f"quantization = BitsAndBytesConfig({_kwargs(quantization)})",
        ]
        load_args.append("quantization_config=quantization")
    args = "".join(f"\n    {arg}," for arg in [*load_args, f"dtype=torch.{dtype}", 'device_map={"": DEVICE}'])
    lines += [
        "tokenizer = AutoTokenizer.from_pretrained(ADAPTER)",
        f"base = AutoModelForCausalLM.from_pretrained({args}\n)",
        "if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # the run added a pad token",
        "    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows come from the adapter",
        "model = PeftModel.from_pretrained(base, ADAPTER).eval()",
        "",
    ]
    return _HEADER.format(imports="\n".join(imports)) + "\n".join(lines)


def _base_lines(source: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Lines defining ``BASE`` (and ``REVISION``), and the ``from_pretrained`` arguments naming it."""
    if source["kind"] == "hub":
        revision = source.get("commit") or source.get("revision")
        lines = [f"BASE = {_py(source['repo_id'])}"]
        if revision:
            lines.append(f"REVISION = {_py(revision)}")
            return lines, ["BASE", "revision=REVISION"]
        return lines, ["BASE"]
    if source["kind"] == "local_dir":
        note = f"  # hub snapshot of {source['repo_id']}" if source.get("repo_id") else ""
        return [f"BASE = {_py(source['path'])}{note}"], ["BASE"]
    return [
        f"# The base is this GGUF file (sha256 {source.get('sha256')}).",
        "# qlora_kit dequantizes it once into a plain model folder, as it did for training",
        "# (transformers cannot quantize a model it loads from a GGUF file).",
        f"BASE = dequantize_gguf({_py(source['path'])})",
    ], ["BASE"]


def _kwargs(values: dict[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        if name in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage") and isinstance(value, str):
            parts.append(f"{name}=torch.{value}")
        else:
            parts.append(f"{name}={_py(value)}")
    return "\n    " + ",\n    ".join(parts) + ",\n"


def _py(value: Any) -> str:
    """A Python literal of a JSON-like value, with double-quoted strings."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    return repr(value)
