"""The sections of a model card (see :mod:`qlora_kit.export.card`), each rendered from plain data: the
run config as a dict, the base model's source description, and the reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from qlora_kit.export.card_data import prompt_template

_EXAMPLE_CHARS = 3000  # a card shows the start of a long first example
LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
_HYPERPARAMETERS = (
    ("LoRA rank r / alpha / dropout", ("adapter.r", "adapter.alpha", "adapter.dropout")),
    ("LoRA target modules", ("adapter.target_modules",)),
    ("DoRA / rsLoRA", ("adapter.use_dora", "adapter.use_rslora")),
    ("optimizer / lr / weight decay", ("train.optimizer.kind", "train.optimizer.lr", "train.optimizer.weight_decay")),
    ("scheduler / warmup ratio / warmup steps", ("train.scheduler.kind", "train.scheduler.warmup_ratio", "train.scheduler.warmup_steps")),
    ("epochs / max steps", ("train.epochs", "train.max_steps")),
    ("micro batch / gradient accumulation", ("train.micro_batch_size", "train.grad_accum")),
    ("max grad norm / mixed precision / seed", ("train.max_grad_norm", "train.mixed_precision", "train.seed")),
    ("max length / packing / train on inputs", ("data.max_length", "data.packing", "data.train_on_inputs")),
)  # fmt: skip


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` (`train.optimizer.lr`) of a config dict; None where a key is missing."""
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def front_matter(kind: str, source: dict[str, Any]) -> str:
    """The YAML header the Hugging Face hub reads (base_model only when it is a hub id)."""
    repo = source.get("repo_id")
    tags = ["qlora_kit", "qlora", "lora", "text-generation"] + (["gguf"] if kind == "gguf" else [])
    if repo and kind == "adapter":
        tags.append(f"base_model:adapter:{repo}")
    meta: dict[str, Any] = {"base_model": repo} if repo else {}  # the hub only accepts repo ids here
    meta.update(library_name=LIBRARY[kind], license="unknown", pipeline_tag="text-generation", tags=tags)
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n"


def _base_name(source: dict[str, Any]) -> str:
    return source.get("repo_id") or Path(source.get("path") or source["name_or_path"]).name


def intro(
    kind: str, config: dict[str, Any], source: dict[str, Any], quant: dict[str, Any] | None, merge: Any
) -> str:
    """Title and what the export is; for an adapter, that it must be loaded on the base as trained."""
    name = _base_name(source)
    trained_on = _trained_on(config, quant)
    if kind == "adapter":
        text = f"# LoRA adapter for {name}\n\nA LoRA adapter (PEFT format) fine-tuned with qlora_kit on {trained_on}.\n"
        if quant is not None:
            text += (
                "\n**Load it onto the base quantized exactly as in training** (the code below does): the adapter "
                "learned to correct that quantization's rounding, so on a 16-bit base it is a different model."
            )
            text += (
                " `../merged/` holds the 16-bit alternative; the merge verification below says how close it is.\n"
                if merge is not None
                else " A merged 16-bit model is made with `qlora-kit export OUTPUT_DIR --kind merged`.\n"
            )
        return text
    if kind == "merged":
        base = (merge or {}).get("merge_base", config_value(config, "export.merge_base") or "n/a")
        return (
            f"# {name} fine-tuned with QLoRA (merged, 16-bit)\n\nThe LoRA adapter trained on {trained_on}, merged "
            f"into the `{base}` base weights and saved as an ordinary transformers model. The merge "
            "verification below compares its logits with the adapter model's.\n"
        )
    return f"# {name} fine-tuned with QLoRA (GGUF)\n\nThe merged model converted to GGUF for llama.cpp.\n"


def _trained_on(config: dict[str, Any], quant: dict[str, Any] | None) -> str:
    if quant is None:
        kind = config_value(config, "quant.kind")
        if kind not in (None, "none"):  # a plugin kind that is not bitsandbytes
            return f"a base quantized by the `{kind}` quantization kind (see the run configuration)"
        return f"a {config_value(config, 'quant.compute_dtype')} (not quantized) base"
    if quant.get("load_in_8bit"):
        return "an 8-bit (LLM.int8) quantized base"
    double = ", double quantization" if quant.get("bnb_4bit_use_double_quant") else ""
    return f"a 4-bit {str(quant.get('bnb_4bit_quant_type', '')).upper()}-quantized base (QLoRA{double})"


def base_section(source: dict[str, Any], config: dict[str, Any], quant: dict[str, Any] | None) -> str:
    """Where the base model came from and how it was quantized for training."""
    from qlora_kit.model.source import describe_source_text

    lines = ["## Base model and source", "", f"- Source: {describe_source_text(source)}"]
    if source["kind"] == "gguf":
        lines.append(
            "- The GGUF file was dequantized by qlora_kit (`qlora_kit.model.gguf.dequantize_gguf`) into a "
            "plain model, then quantized for training as below. `adapter_config.json` names the GGUF file, "
            "which `AutoPeftModelForCausalLM` cannot load a base from: use the code under *How to load*."
        )
        origin = ", ".join(f"{k}: {v}" for k, v in (source.get("metadata") or {}).items())
        if origin:
            lines.append(f"- GGUF metadata: {origin}")
    if source.get("tokenizer"):
        lines.append(f"- Tokenizer: `{source['tokenizer']}`")
    lines.append(f"- Pad-token policy: `{config_value(config, 'model.pad_token')}`")
    if quant is None:
        lines.append(f"- Trained on {_trained_on(config, None)}.")
    else:
        settings = ", ".join(f"`{k}={v}`" for k, v in quant.items())
        lines.append(
            f"- Quantization during training (`BitsAndBytesConfig`, also in `quantization_config.json`): {settings}"
        )
    return "\n".join(lines) + "\n"


def data_section(config: dict[str, Any], data: dict[str, Any] | None, run_cfg: Any, tokenizer: Any) -> str:
    """The data source, row and token counts (from the data report), the formatter and its template."""
    src = config_value(config, "data.source") or {}
    origin = src.get("path") or src.get("rows")
    if src.get("path"):
        origin = (
            f"`{src['path']}`"
            + (f" ({src['name']})" if src.get("name") else "")
            + f", split `{src.get('split')}`"
        )
    subset = config_value(config, "data.subset")
    lines = ["## Data", "", f"- Source: {origin}"]
    if subset:
        lines.append(f"- Subset: {subset.get('n'):,} rows, shuffled with seed {subset.get('seed')}")
    spec = config_value(config, "data.formatter") or {}
    options = f" with options `{json.dumps(spec.get('options'))}`" if spec.get("options") else ""
    lines.append(
        f"- Formatter: `{spec.get('kind')}`{options}; train on inputs: {config_value(config, 'data.train_on_inputs')}"
    )
    if data is None:
        lines.append("- Row and token counts: not recorded (no data report was found for this run).")
    else:
        dropped = sum((data.get("rows_dropped") or {}).values())
        lines += [
            f"- Training rows: {_fmt(data.get('rows_loaded'))} loaded, {_fmt(data.get('rows_kept'))} trained on, "
            f"{_fmt(dropped)} dropped, {_fmt(data.get('rows_skipped'))} skipped, "
            f"{_fmt(data.get('rows_truncated'))} truncated (max length {_fmt(data.get('max_length'))}, "
            f"`{data.get('truncation')}`); held-out rows: {_fmt(data.get('eval_rows'))}",
            f"- Tokens per epoch: {_fmt(data.get('tokens'))}, of which supervised: {_fmt(data.get('supervised_tokens'))}",
        ]
    templates = prompt_template(run_cfg.data.formatter, tokenizer)
    if templates or (data and data.get("example")):
        trained = (
            "every token was trained (`train_on_inputs`)"
            if config_value(config, "data.train_on_inputs")
            else "it had no loss; the rest was trained, with the EOS token after it"
        )
        lines += [
            "",
            "### Prompt format",
            "",
            f"Text inside `[MASKED]...[/MASKED]` is the prompt: {trained}.",
        ]
        lines += [f"\n```text\n{t}\n```" for t in templates]
        if data and data.get("example"):
            example = (
                data["example"]
                if len(data["example"]) <= _EXAMPLE_CHARS
                else data["example"][:_EXAMPLE_CHARS] + "…"
            )
            lines += ["", "First training example:", f"\n```text\n{example}\n```"]
    return "\n".join(lines) + "\n"


def training_section(config: dict[str, Any], train: dict[str, Any] | None) -> str:
    """Key hyper-parameters (from the config) and the final numbers (from the train summary)."""
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    for label, keys in _HYPERPARAMETERS:
        lines.append(f"| {label} | {' / '.join(_fmt(config_value(config, k)) for k in keys)} |")
    lines.append("")
    if train is None:
        lines.append("Final losses: not recorded (no metrics were found for this run).")
    else:
        lines += [
            f"- Steps: {_fmt(train.get('steps'))} ({_fmt(train.get('epochs'))} epochs)"
            + (", stopped early" if train.get("stopped_early") else ""),
            f"- Final train loss: {_fmt(train.get('train_loss'))}",
            f"- Final eval loss: {_fmt(train.get('eval_loss'))} (perplexity {_fmt(train.get('eval_perplexity'))})",
            f"- Tokens: {_fmt(train.get('tokens'))} (supervised {_fmt(train.get('supervised_tokens'))})",
        ]
        if train.get("train_time_s") is not None:
            lines.append(f"- Training time: {train['train_time_s']:.1f} s")
    return "\n".join(lines) + "\n"


def merge_section(report: dict[str, Any], kind: str) -> str:
    """The merge report: verdict and the error of each merge base."""
    lines = [
        "## Merge verification",
        "",
        ("The merged 16-bit model in `../merged/`, " if kind == "adapter" else "This model, ")
        + f"compared with the adapter model on {report.get('prompts')} {report.get('prompt_source')}:",
        "",
        f"> {report.get('message')}",
        "",
        "| merge base | mean KL | max KL | top-1 agreement | max abs logit diff | tokens |",
        "|---|---|---|---|---|---|",
    ]
    for base, e in (report.get("bases") or {}).items():
        chosen = " (saved)" if base == report.get("merge_base") else ""
        lines.append(
            f"| {base}{chosen} | {e['mean_kl']:.3g} | {e['max_kl']:.3g} | {e['top1_agreement']:.2%} "
            f"| {e['max_abs_logit_diff']:.4g} | {e['tokens']} |"
        )
    return "\n".join(lines) + "\n"


def gguf_section(report: dict[str, Any]) -> str:
    """The GGUF verification report: logits and tokenizer against the merged model."""
    logits, tok = report.get("logits") or {}, report.get("tokenizer") or {}
    return "\n".join([
        "## GGUF verification",
        "",
        f"> {report.get('message')}",
        "",
        f"- File: `{report.get('file')}` ({report.get('gguf_dtype')}, {_fmt(report.get('bytes'))} bytes)",
        f"- Reloaded with transformers and compared with the merged model on {report.get('prompts')} "
        f"{report.get('prompt_source')}: mean KL {_fmt(logits.get('mean_kl'))}, top-1 agreement "
        f"{_fmt(logits.get('top1_agreement'))}, max abs logit diff {_fmt(logits.get('max_abs_logit_diff'))}",
        f"- Tokenizer: encodes identically {tok.get('encodes_identically')}, same EOS {tok.get('same_eos')}, "
        f"same chat template {tok.get('same_chat_template')}",
        "",
    ])  # fmt: skip


def load_notes(kind: str, path: str | Path) -> str:
    """What to know beside the load code."""
    if kind == "gguf":
        return f"\nWith llama.cpp: `llama-cli -m {path}` (use the chat template stored in the file with `-cnv`).\n"
    if kind == "adapter":
        return (
            "\nThe tokenizer saved here is the one used in training (pad token included); "
            "`generation_config.json` holds the EOS ids the model learned to stop at.\n"
        )
    return ""


def versions_section(versions: dict[str, str] | None) -> str:
    """Python and package versions as a table."""
    if not versions:
        return "## Library and package versions\n\nNot recorded.\n"
    rows = "\n".join(f"| {name} | {version} |" for name, version in versions.items())
    return f"## Library and package versions\n\n| package | version |\n|---|---|\n{rows}\n"
