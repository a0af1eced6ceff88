"""ModelLoader: a model and tokenizer from a hub id, a local directory or a `.gguf` file, quantized per
the `quant` section; and the k-bit training preparation that does not upcast to fp32.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from qlora_kit.compat import modules_kept_unquantized
from qlora_kit.errors import ModelLoadError, UsageError, first_line
from qlora_kit.model import varlen_attention
from qlora_kit.model.checks import (
    check_attn_implementation,
    check_finite_weights,
    check_max_length,
    validate_checkpoint_dir,
)
from qlora_kit.model.compute_dtype import resolve_quant_config
from qlora_kit.model.gguf import dequantize_gguf
from qlora_kit.model.hub import check_hub_id, is_hub_id
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.model.tokens import apply_pad_policy, fit_embeddings_to_tokenizer

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; None means this process's GPU when CUDA is available (``cuda:0``,
    or ``cuda:<LOCAL_RANK>`` under a distributed launch, so each rank loads onto its own GPU), else ``cpu``.

    Raises:
        UsageError: ``device`` is not a device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
    """
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {device!r}: not a device; use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return device


class ModelLoader:
    """Loads the base model (quantized per ``quant_cfg``) and its tokenizer.

    Non-quantized parameters (embeddings, norms, biases, the output head) are loaded in the compute
    dtype, not fp32: the reference recipe saw them in float16 after 4-bit loading, and blanket fp32 would double
    their memory for no gain in a frozen base. Every loaded model gets
    :func:`~qlora_kit.model.quant.keep_4bit_weights_trainable`, so bitsandbytes' CPU inference repacking
    can never break training.

    Args:
        model_cfg: the `model` section.
        quant_cfg: the `quant` section (any registered quantization kind).
        device: where the model lives; None means ``cuda:0`` when available, else ``cpu``.
    """

    def __init__(self, model_cfg: Any, quant_cfg: Any, device: str | torch.device | None = None):
        from qlora_kit.registry import quantization

        self.model_cfg = model_cfg
        self.device = resolve_device(device)
        validated = quantization.validate(quant_cfg, default_kind="bnb_4bit")
        self.quant_cfg = resolve_quant_config(validated, self.device)  # `auto` compute dtype, for this device
        self.quantization = self.quant_cfg.build()
        self._source: str | None = None

    def load(self, tokenizer: Any = None) -> tuple[Any, Any]:
        """The model and tokenizer, with the pad-token policy applied to both.

        Pass a tokenizer from :meth:`load_tokenizer` to reuse it (e.g. to check the data first).
        """
        tokenizer = tokenizer if tokenizer is not None else self.load_tokenizer()
        model = self.load_model()
        fit_embeddings_to_tokenizer(model, tokenizer)
        return model, tokenizer

    def source(self) -> str:
        """The directory or hub id transformers loads from (a GGUF file is converted first, once)."""
        if self._source is None:
            self._source = self._resolve_source()
        return self._source

    def check(self, max_length: int | None = None) -> None:
        """Everything that can be checked before a weight is read, so a run fails in seconds: the
        device, compute dtype, bitsandbytes, attention kernel, the source (a model directory, or a hub
        id that is cached or downloadable now) and, given ``max_length`` (`data.max_length`), the
        model's position limit from its config.json.

        Raises:
            ModelLoadError: the model cannot be loaded here (the message names the field).
            ConfigError: ``max_length`` is beyond the model's position embeddings.
        """
        self._check_environment()
        source = self.source()
        if max_length is not None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(
                source, trust_remote_code=self.model_cfg.trust_remote_code, **self._hub_kwargs()
            )
            check_max_length(
                config, max_length, self.model_cfg.name_or_path, self.model_cfg.trust_remote_code
            )

    def load_model(self) -> Any:
        """The model alone, quantized per the `quant` section and placed on the device.

        Raises:
            ModelLoadError: see :meth:`check`; also unreadable files and NaN/inf weights (named).
        """
        from transformers import AutoModelForCausalLM

        self._check_environment()
        source = self.source()
        kwargs: dict[str, Any] = dict(
            dtype=self.quantization.compute_dtype,
            device_map={"": str(self.device)},
            trust_remote_code=self.model_cfg.trust_remote_code,
            **self._hub_kwargs(),
        )
        if self.model_cfg.attn_implementation not in (None, varlen_attention.NAME):  # that one: after loading
            kwargs["attn_implementation"] = self.model_cfg.attn_implementation
        kwargs.update(self.quantization.load_kwargs(self))
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:  # transformers' way of saying "not found / not downloadable / unreadable"
            raise ModelLoadError(f"model.name_or_path: cannot load {source!r}: {first_line(exc)}") from exc
        model = self.quantization.after_load(model)
        varlen_attention.adopt(
            model, self.model_cfg.attn_implementation, self.device, self.quant_cfg.compute_dtype
        )
        check_finite_weights(model, source)
        keep_4bit_weights_trainable(model)
        return model

    def load_original(self) -> Any:
        """The model as stored: not quantized, in its stored dtype, on the CPU (for comparisons)."""
        from transformers import AutoModelForCausalLM

        source = self.source()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype="auto", trust_remote_code=self.model_cfg.trust_remote_code, **self._hub_kwargs()
            )
        except OSError as exc:
            raise ModelLoadError(f"model.name_or_path: cannot load {source!r}: {first_line(exc)}") from exc
        check_finite_weights(model, source)
        return model

    def load_tokenizer(self) -> Any:
        """The tokenizer with the `model.pad_token` policy and `model.model_max_length` applied."""
        from transformers import AutoTokenizer

        field = "model.tokenizer" if self.model_cfg.tokenizer else "model.name_or_path"
        name = self._resolve_tokenizer() if self.model_cfg.tokenizer else self.source()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                name, trust_remote_code=self.model_cfg.trust_remote_code, **self._hub_kwargs()
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{field}: cannot load a tokenizer from {name!r}: {first_line(exc)}"
            ) from exc
        if self.model_cfg.model_max_length:
            tokenizer.model_max_length = self.model_cfg.model_max_length
        apply_pad_policy(tokenizer, self.model_cfg.pad_token)
        return tokenizer

    # ----------------------------------------------------------------------------------- internals

    def _hub_kwargs(self) -> dict[str, Any]:
        return {"revision": self.model_cfg.revision, "cache_dir": self.model_cfg.cache_dir}

    def _check_environment(self) -> None:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {self.device} was asked for, but CUDA is not available here")
        if self.device.type == "cuda" and self.device.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {self.device} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)"
            )
        self.quantization.check(self.device)
        check_attn_implementation(
            self.model_cfg.attn_implementation, self.device, self.quant_cfg.compute_dtype
        )

    def _resolve_source(self) -> str:
        name = self.model_cfg.name_or_path
        path = Path(name).expanduser()
        if name.endswith(".gguf"):
            cache = Path(self.model_cfg.cache_dir) if self.model_cfg.cache_dir else None
            return str(dequantize_gguf(path, cache))
        if path.is_dir():
            validate_checkpoint_dir(path)
            return str(path)
        if path.exists() or not is_hub_id(name):
            raise ModelLoadError(f"model.name_or_path: no model directory at {name!r}")
        check_hub_id(name, "model.name_or_path", **self._hub_kwargs())
        return name

    def _resolve_tokenizer(self) -> str:
        name = self.model_cfg.tokenizer
        if Path(name).expanduser().is_dir():
            return name
        if not is_hub_id(name):
            raise ModelLoadError(f"model.tokenizer: no tokenizer directory at {name!r}")
        check_hub_id(
            name,
            "model.tokenizer",
            filename="tokenizer_config.json",
            require_file=False,
            **self._hub_kwargs(),
        )
        return name

    def unquantized_modules(self, extra: list[str]) -> list[str] | None:
        """The modules a quantization kind keeps in 16 bits: transformers' defaults (the output head)
        plus ``extra`` (None when there is nothing extra: transformers then applies its defaults).

        transformers drops its defaults when ``llm_int8_skip_modules`` is given, which would quantize
        the output head; so the defaults are computed here on an empty (meta) model and kept.
        """
        if not extra:
            return None
        return sorted(set(modules_kept_unquantized(self.skeleton())) | set(extra))

    def skeleton(self) -> Any:
        """The model built from its ``config.json`` on the meta device: shapes and names, no weights."""
        from transformers import AutoConfig, AutoModelForCausalLM

        trust = self.model_cfg.trust_remote_code
        config = AutoConfig.from_pretrained(self.source(), trust_remote_code=trust, **self._hub_kwargs())
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
