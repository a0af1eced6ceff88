"""The shapes a memory plan needs, read from a model's ``config.json`` through an empty (meta) model.

``AutoModelForCausalLM.from_config`` under ``torch.device("meta")`` builds every module with shapes but
no storage, in about a second for an 8B model, so the plan uses the model's real layer list (which
linears exist, which are tied, which stay unquantized) instead of a per-architecture table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qlora_kit.errors import ModelLoadError

# Input groups of Llama-family LoRA targets (llama, mistral, qwen2/3, gemma, phi3-style names). Targets
# in one group read the same tensor; `attn_out` reads the attention output, which SDPA saves anyway.
_INPUT_GROUPS = {
    "q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
    "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_mid",
}  # fmt: skip
CALIBRATED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Architectures whose per-layer activation formula was checked against saved-tensor counts."""


@dataclass(frozen=True)
class Linear:
    """One linear layer: its dotted name, features, and whether the 4/8-bit quantizer converts it."""

    name: str
    in_features: int
    out_features: int
    quantized: bool

    @property
    def numel(self) -> int:
        """Weight elements."""
        return self.in_features * self.out_features

    @property
    def input_group(self) -> str:
        """Which tensor it reads, for LoRA inputs shared by several targets (its own name if unknown)."""
        leaf = self.name.rsplit(".", 1)[-1]
        return _INPUT_GROUPS.get(leaf, self.name)


@dataclass(frozen=True)
class ModelShape:
    """A causal LM's dimensions and parameter layout, as the planner sees it."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    linears: tuple[Linear, ...]
    """Every linear layer except the output head (which the quantizer never converts)."""
    head: Linear
    """The output head (lm_head)."""
    other_params: int
    """Elements of parameters outside `linears` and `head` (embeddings, norms, biases), tied counted once."""
    fp32_params: int = 0
    """Elements of those kept in fp32 (`_keep_in_fp32_modules`)."""
    buffer_bytes: int = 0
    """Bytes of buffers (rotary frequencies)."""
    layer_prefix: str = field(default="")
    """Dotted prefix of the first decoder layer (e.g. ``model.layers.0.``)."""

    @property
    def q_dim(self) -> int:
        """Query width (heads x head_dim)."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Key (and value) width (kv heads x head_dim)."""
        return self.kv_heads * self.head_dim

    @property
    def calibrated(self) -> bool:
        """Whether the activation formula was checked on this architecture."""
        return self.model_type in CALIBRATED_TYPES

    def layer_linears(self) -> list[Linear]:
        """The linears of one decoder layer (the first; layers are assumed identical)."""
        return [lin for lin in self.linears if lin.name.startswith(self.layer_prefix)]


def load_model_config(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a local model directory (or a ``config.json`` file)."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        raise ModelLoadError(
            f"model.name_or_path: planning reads a config.json; {name_or_path} is a GGUF file"
        )
    if path.is_file() and path.name == "config.json":
        path = path.parent
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model.name_or_path: cannot read a config from {name_or_path!r}: {exc}"
        ) from exc


def model_shape(
    config: Any, skip_modules: list[str] | None = None, trust_remote_code: bool = False
) -> ModelShape:
    """The :class:`ModelShape` of ``config``, built on the meta device (no weights, no memory).

    Args:
        config: a transformers ``PretrainedConfig``.
        skip_modules: module names the quantizer keeps in 16 bits besides its defaults.
        trust_remote_code: passed to ``from_config``.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_module = model.get_output_embeddings()
    keep = _not_converted(model, skip_modules or [])
    linears, head, linear_ids = [], None, set()
    for name, module in model.named_modules():
        features = _features(module)
        if features is None:
            continue
        if module is head_module:
            head = Linear(name, *features, quantized=False)
        else:
            linears.append(Linear(name, *features, quantized=_converted(name, keep)))
        linear_ids.add(id(module.weight))
    if head is None:
        raise ModelLoadError(f"{type(model).__name__}: no linear output head to plan for")
    fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    other = fp32_params = 0
    for name, param in model.named_parameters():  # named_parameters yields a tied weight once
        if id(param) in linear_ids:
            continue
        other += param.numel()
        fp32_params += param.numel() if any(name.startswith(f"{m}.") or f".{m}." in name for m in fp32) else 0
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    embeddings = model.get_input_embeddings().weight
    return ModelShape(
        model_type=text.model_type, layers=text.num_hidden_layers, hidden=text.hidden_size, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        vocab=head.out_features, tied_embeddings=head_module.weight is embeddings,
        linears=tuple(linears), head=head, other_params=other, fp32_params=fp32_params,
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        layer_prefix=_first_layer_prefix(model),
    )  # fmt: skip


def _first_layer_prefix(model: nn.Module) -> str:
    # transformers 5.x: decoder layers subclass GradientCheckpointingLayer
    from transformers.modeling_layers import GradientCheckpointingLayer

    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            return f"{name}."
    raise ModelLoadError(f"{type(model).__name__}: no decoder layers found to plan for")


def _not_converted(model: nn.Module, skip_modules: list[str]) -> list[str]:
    # transformers 5.x quantizers/base.py: what the bnb quantizer leaves unconverted by default (the
    # output head, tied weights, the last module), plus the config's skip list and fp32 modules.
    from transformers.quantizers.base import get_keys_to_not_convert

    keep = set(get_keys_to_not_convert(model)) | set(skip_modules)
    keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return sorted(keep)


def _converted(name: str, keep: list[str]) -> bool:
    # transformers 5.x quantizers/quantizers_utils.py: the rule replace_with_bnb_linear applies
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, keep)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative integers."""
    return -(-a // b)


def _features(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of a linear layer (``nn.Linear``, or GPT-2's transposed ``Conv1D``), else None."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return None
