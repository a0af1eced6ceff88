"""Adapter methods (the `adapter` section). The built-in ``lora`` kind, :class:`AdapterBuilder`, turns
its options into a validated ``peft.LoraConfig`` and a PEFT model in which only the adapter (and
`modules_to_save`) trains. A plugin method registers in :data:`qlora_kit.registry.adapters` with an
``apply(model) -> model`` of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Literal

from pydantic import Field
from torch import nn

from qlora_kit.errors import ConfigError
from qlora_kit.model.lora_dropout import use_light_dropout
from qlora_kit.registry import adapters
from qlora_kit.strict import StrictModel

# Typed `adapter.*` fields and the LoraConfig arguments they set; peft_overrides may not repeat them.
_TYPED = {
    "r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "bias": "bias",
    "target_modules": "target_modules",
    "use_dora": "use_dora",
    "use_rslora": "use_rslora",
    "modules_to_save": "modules_to_save",
    "task_type": "(always CAUSAL_LM)",
}


def linear_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the model's linear layers (``nn.Linear`` and its bitsandbytes 4/8-bit
    subclasses, GPT-2's ``Conv1D``), the output head excluded."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head
    ]


def _leaf_names(model: nn.Module) -> list[str]:
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and not list(m.children())}
    )


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of names: the full name, or its last dotted components
    return name == target or name.endswith("." + target)


class LoraOptions(StrictModel):
    """LoRA adapter settings (names as in the LoRA paper and PEFT)."""

    r: int = Field(default=8, gt=0)
    """Rank of the low-rank update."""
    alpha: float = Field(default=16, gt=0, allow_inf_nan=False)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    light_dropout: bool = True
    """Keep no dropped-out copy of each adapter input for the backward pass (the mask is drawn again from a
    seed): less activation memory, on CUDA for models 2,048 wide or more. `false`: PEFT's dropout modules."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names (suffixes) to adapt, or `all-linear`: every linear layer except the output head."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. `lm_head` after adding tokens)."""
    peft_overrides: dict[str, Any] = Field(default_factory=dict)
    """Any other `peft.LoraConfig` argument; validated by building the real LoraConfig."""


@adapters.register("lora")
class AdapterBuilder:
    """LoRA (and DoRA / rsLoRA) adapters through PEFT.

    LoRA weights are kept in fp32 (peft's ``autocast_adapter_dtype``), also on a bf16 base: they are
    under 1% of the parameters, and in bf16 an AdamW update of lr 2e-4 is below the precision of most
    weights, so training would stall. The matmuls still run in the compute dtype under autocast.

    Args:
        adapter_cfg: the `adapter` section (a validated config or a mapping of its options).
    """

    Options = LoraOptions

    def __init__(self, adapter_cfg: Any):
        self.cfg = adapters.validate(adapter_cfg, default_kind="lora")

    def resolve_targets(self, model: nn.Module) -> list[str]:
        """The module names LoRA wraps.

        ``all-linear`` gives the distinct last names of every linear layer except the output head
        (full dotted names if one of them is also the head's name). A list is checked: each name
        must match a module.

        Raises:
            ConfigError: at `adapter.target_modules`, listing the module names that exist.
        """
        if self.cfg.target_modules == "all-linear":
            names = linear_layer_names(model)
            if not names:
                raise ConfigError([("adapter.target_modules", "all-linear: the model has no linear layers")])
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            head_names = [n for n, m in model.named_modules() if m is head and head is not None]
            if any(_matches(h, leaf) for h in head_names for leaf in leaves):
                return names
            return leaves
        self._check_exist(model, self.cfg.target_modules, "adapter.target_modules")
        return list(self.cfg.target_modules)

    def lora_config(self, model: nn.Module) -> Any:
        """The ``peft.LoraConfig`` for ``model``: typed fields plus validated `peft_overrides`.

        Raises:
            ConfigError: an unknown target or `modules_to_save` name, or a bad `peft_overrides` key
                or value (named `adapter.peft_overrides.<key>`).
        """
        from peft import LoraConfig

        if self.cfg.modules_to_save:
            self._check_exist(model, self.cfg.modules_to_save, "adapter.modules_to_save")
        overrides = dict(self.cfg.peft_overrides)
        self._check_override_keys(overrides)
        kwargs = dict(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            bias=self.cfg.bias,
            target_modules=self.resolve_targets(model),
            use_dora=self.cfg.use_dora,
            use_rslora=self.cfg.use_rslora,
            modules_to_save=list(self.cfg.modules_to_save) or None,
            task_type="CAUSAL_LM",
        )
        try:
            return LoraConfig(**kwargs, **overrides)
        except (TypeError, ValueError) as exc:
            where = f"adapter.peft_overrides.{next(iter(overrides))}" if len(overrides) == 1 else "adapter"
            raise ConfigError([(where, f"peft.LoraConfig rejected the settings: {exc}")]) from exc

    def apply(self, model: nn.Module) -> Any:
        """Wrap ``model`` in a ``peft.PeftModel`` in which only adapter and `modules_to_save`
        parameters require grad (the base, 4-bit or not, stays frozen). LoRA dropout keeps no dropped
        copy of its inputs for the backward pass (:mod:`~qlora_kit.model.lora_dropout`)."""
        from peft import get_peft_model

        peft_model = get_peft_model(model, self.lora_config(model))
        if self.cfg.light_dropout:
            use_light_dropout(peft_model)
        return peft_model

    # ----------------------------------------------------------------------------------- internals

    @staticmethod
    def _check_exist(model: nn.Module, wanted: list[str], field: str) -> None:
        names = [n for n, _ in model.named_modules() if n]
        missing = [t for t in wanted if not any(_matches(n, t) for n in names)]
        if missing:
            existing = ", ".join(_leaf_names(model))
            raise ConfigError(
                [
                    (
                        field,
                        f"no module named {', '.join(map(repr, missing))} in the model; modules: {existing}",
                    )
                ]
            )

    @staticmethod
    def _check_override_keys(overrides: dict[str, Any]) -> None:
        from peft import LoraConfig

        known = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
        errors = []
        for key in overrides:
            if key in _TYPED:
                errors.append((f"adapter.peft_overrides.{key}", f"set it as adapter.{_TYPED[key]} instead"))
            elif key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append((f"adapter.peft_overrides.{key}", f"not a peft.LoraConfig argument{hint}"))
        if errors:
            raise ConfigError(errors)
