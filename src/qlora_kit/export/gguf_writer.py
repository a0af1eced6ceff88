"""GGUF export: a merged llama-architecture model written as one `.gguf` file for llama.cpp, and verified
by reloading it with transformers. (:mod:`qlora_kit.model.gguf` is the other direction: it reads GGUF.)

The layout follows llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``: llama.cpp tensor names,
q/k projection rows permuted for its RoPE layout, 1-D tensors (norms) in F32, 2-D ones in the asked type,
no ``output.weight`` when the embeddings are tied, and the tokenizer with its chat template.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from qlora_kit.errors import ExportError
from qlora_kit.files import atomic_path

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
GGUF_DTYPES = ("f16", "bf16", "q8_0")
_F16_MAX = 65504.0


def _types(dtype: str) -> tuple[Any, Any]:
    """(tensor type of 2-D weights, llama.cpp file type) of a ``dtype`` name."""
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    table = {"f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16), "q8_0": (q.Q8_0, f.MOSTLY_Q8_0)}
    if dtype not in table:
        raise ExportError(f"gguf dtype {dtype!r} is not supported; choose one of {', '.join(GGUF_DTYPES)}")
    return table[dtype]


def check_exportable(model: Any) -> None:
    """Raise unless ``model`` is a plain (merged, unquantized) llama-architecture transformers model.

    Raises:
        ExportError: naming what is unsupported: a PEFT model, a quantized model, another architecture,
            bias terms, or a RoPE scaling transformers' GGUF loader would not read back.
    """
    if hasattr(model, "peft_config"):
        raise ExportError("GGUF export needs the merged model (merge_and_unload), not a PEFT model")
    if getattr(model.config, "quantization_config", None) is not None:
        raise ExportError(
            "GGUF export needs a 16/32-bit model; this one is quantized (export the merged model)"
        )
    check_architecture(model.config, type(model).__name__)


def check_architecture(config: Any, class_name: str = "the model") -> None:
    """Raise unless a model ``config`` describes an architecture the GGUF writer supports (checked before a
    merge, so an unsupported model fails before any work is done).

    Raises:
        ExportError: another architecture, bias terms, or a RoPE scaling (each named).
    """
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"GGUF export supports llama-architecture models ({', '.join(SUPPORTED_MODEL_TYPES)}: Llama, "
            f"SmolLM2, Mistral, ...); this model is {config.model_type!r} ({class_name}). "
            "Convert merged/ with llama.cpp's convert_hf_to_gguf.py instead"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError("GGUF export: llama models with attention or MLP bias terms are not supported")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ExportError(
            f"GGUF export: RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported "
            "(only the default RoPE)"
        )


def permute_qk(weights: Any, n_head: int) -> Any:
    """Reorder q/k projection rows from transformers' rotate-half RoPE layout to llama.cpp's interleaved one."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    dtype: str = "f16",
    name: str | None = None,
    pre_tokenizer: str | None = None,
) -> Path:
    """Write a merged llama-architecture ``model`` and its ``tokenizer`` as a GGUF file at ``path``, atomically.

    Args:
        model: A plain transformers ``LlamaForCausalLM``-like model (``merge_and_unload()``'s result).
        tokenizer: Its fast tokenizer (GPT-2 style byte-level BPE); BOS/EOS/pad ids and the chat template
            are carried over.
        path: The `.gguf` file to write.
        dtype: ``f16``, ``bf16`` or ``q8_0`` for the 2-D weights (llama.cpp falls back to F16 for a Q8_0
            tensor whose rows are not a multiple of 32; so does this).
        name: ``general.name`` (default: the model's ``name_or_path`` folder name).
        pre_tokenizer: llama.cpp pre-tokenizer name, when it cannot be recognised from the tokenizer.

    Returns:
        ``path`` as a Path.

    Raises:
        ExportError: unsupported architecture, tokenizer or dtype, or weights too large for F16.
    """
    import gguf

    check_exportable(model)
    weight_type, file_type = _types(dtype)
    config, path = model.config, Path(path)
    tensors = _gguf_tensors(model)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        try:
            _add_hparams(writer, config, name or Path(str(config.name_or_path or "model")).name, file_type)
            vocab_size = model.get_input_embeddings().weight.shape[0]
            from qlora_kit.export.gguf_vocab import add_tokenizer

            add_tokenizer(writer, tokenizer, vocab_size, pre_tokenizer)
            plan = [(gguf_name, tensor, _tensor_type(tensor, weight_type)) for gguf_name, tensor in tensors]
            for gguf_name, tensor, qtype in plan:
                _add_tensor_info(writer, gguf_name, tensor, qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for gguf_name, tensor, qtype in plan:  # one tensor in memory at a time
                writer.write_tensor_data(_encode(gguf_name, tensor, qtype))
        finally:
            writer.close()
    logger.info("GGUF (%s) written to %s", dtype, path)
    return path


def _gguf_tensors(model: Any) -> list[tuple[str, torch.Tensor]]:
    """``(llama.cpp name, tensor)`` pairs, q/k permuted, the output head left out when tied."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    out = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd as the output head when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"GGUF export: no llama.cpp tensor name for {hf_name!r}")
        if hf_name.endswith("q_proj.weight"):
            tensor = permute_qk(tensor, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = permute_qk(tensor, kv_heads)
        out.append((gguf_name, tensor))
    return out


def _add_hparams(writer: Any, config: Any, name: str, file_type: Any) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensor_type(tensor: torch.Tensor, weight_type: Any) -> Any:
    """F32 for 1-D tensors (norms), else ``weight_type``; F16 for a Q8_0 tensor whose rows do not split
    into 32-value blocks (llama.cpp's fallback)."""
    import gguf

    q = gguf.GGMLQuantizationType
    if tensor.dim() <= 1:
        return q.F32
    if weight_type == q.Q8_0 and tensor.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] != 0:
        return q.F16
    return weight_type


def _add_tensor_info(writer: Any, name: str, tensor: torch.Tensor, qtype: Any) -> None:
    import gguf
    import numpy as np

    shape = tuple(tensor.shape)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        np_dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
        writer.add_tensor_info(name, shape, np.dtype(np_dtype), tensor.numel() * np.dtype(np_dtype).itemsize)
        return
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)


def _encode(name: str, tensor: torch.Tensor, qtype: Any) -> Any:
    import gguf
    import numpy as np

    array = tensor.detach().to(torch.float32).cpu().numpy()
    if qtype == gguf.GGMLQuantizationType.F16 and np.abs(array).max(initial=0.0) > _F16_MAX:
        raise ExportError(f"GGUF export: {name} has values beyond float16's range; use dtype bf16 or q8_0")
    return np.ascontiguousarray(gguf.quants.quantize(array, qtype))
