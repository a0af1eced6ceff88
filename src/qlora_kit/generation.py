"""Generation from an exported run (adapter or merged), in the prompt format the run was trained with.

The run's formatter renders the prompt (and, in chat mode, the earlier turns); only the segments before
the response are kept and tokenized exactly as training tokenized them. Generation stops at EOS (and at
ChatML's ``<|im_end|>`` for chat formats)::

    loaded = load_exported("runs/quickstart")
    print(generate(loaded, "Reverse the order of these words: red green blue"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qlora_kit.errors import CheckpointError, ModelLoadError, UsageError, first_line
from qlora_kit.export.files import RUN_CONFIG_FILE, eos_token_ids

RESPONSE_MARK = "<<qlora_kit:response>>"
"""Stands in for the response while rendering a prompt; everything from it on is cut."""


@dataclass
class LoadedModel:
    """A model ready to generate with the formatter and tokenizer of its run."""

    model: Any
    tokenizer: Any
    formatter: Any
    run_cfg: Any
    kind: str
    """``adapter`` (4-bit base + PEFT adapter, as trained) or ``merged``."""
    path: Path


def resolve_export_dir(path: str | Path, prefer: str | None = None) -> tuple[Path, str]:
    """The export directory to load and its kind, from a run's output dir or an export dir itself.

    A run dir with both prefers ``merged`` unless ``prefer`` says ``adapter``.

    Raises:
        ModelLoadError: nothing loadable at ``path``.
    """
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path, "adapter"
    if (path / "config.json").is_file() and (path / RUN_CONFIG_FILE).is_file():
        return path, "merged"
    order = [prefer] if prefer else ["merged", "adapter"]
    for kind in order:
        candidate = path / kind
        if candidate.is_dir():
            return resolve_export_dir(candidate)
    raise ModelLoadError(
        f"{path}: no exported model here (expected adapter/ or merged/ from `qlora-kit train` or "
        f"`qlora-kit export`, or such a directory itself)"
    )


def load_exported(path: str | Path, prefer: str | None = None, device: str | None = None) -> LoadedModel:
    """Load an exported adapter (onto its base, quantized as in training) or merged model.

    Args:
        path: A run's output dir, or its ``adapter/`` or ``merged/`` dir.
        prefer: ``adapter`` or ``merged`` when a run dir holds both.
        device: Where to run; default ``cuda:0`` when available, else CPU.
    """
    from qlora_kit.config.io import load_config
    from qlora_kit.formatting import build_formatter
    from qlora_kit.model.loading import resolve_device

    path, kind = resolve_export_dir(path, prefer)
    run_cfg = load_config(path / RUN_CONFIG_FILE)
    if kind == "adapter":
        model, tokenizer = load_adapter_model(path, run_cfg, device)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qlora_kit.model.checks import check_finite_weights, validate_checkpoint_dir

        target = resolve_device(device)
        validate_checkpoint_dir(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map={"": str(target)})
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot load the merged model: {first_line(exc)}") from exc
        check_finite_weights(model, path)
    model.eval()
    formatter = build_formatter(run_cfg.data.formatter)
    if hasattr(formatter, "bind"):  # chat_template renders with the tokenizer's template
        formatter.bind(tokenizer)
    return LoadedModel(model, tokenizer, formatter, run_cfg, kind, path)


def load_adapter_model(path: Path, run_cfg: Any, device: str | None = None) -> tuple[Any, Any]:
    """The run's base (loaded as in training) with the PEFT adapter of directory ``path`` on it.

    Returns:
        ``(PeftModel, tokenizer)``.

    Raises:
        CheckpointError: the adapter weights are missing, corrupt, or do not fit the base.
        ModelLoadError: the base model cannot be loaded.
    """
    from peft import PeftModel
    from safetensors import safe_open

    from qlora_kit.model.loading import ModelLoader

    weights = path / "adapter_model.safetensors"
    try:
        with safe_open(weights, framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # missing, truncated or corrupt (SafetensorError has no stable import)
        raise CheckpointError(
            f"{weights}: the adapter weights are missing or corrupt ({first_line(exc)}); export the run "
            "again (`qlora-kit export`) or train it again"
        ) from exc
    base, tokenizer = ModelLoader(run_cfg.model, run_cfg.quant, device=device).load()
    try:
        return PeftModel.from_pretrained(base, path), tokenizer
    except (OSError, ValueError, RuntimeError) as exc:  # a size mismatch is a RuntimeError
        raise CheckpointError(
            f"{path}: the adapter does not load onto its base model {run_cfg.model.name_or_path!r}: "
            f"{first_line(exc)}"
        ) from exc


def build_example(
    formatter: Any,
    prompt: str,
    *,
    input: str | None = None,
    history: Sequence[Mapping[str, str]] = (),
    fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A row for ``formatter`` whose response is :data:`RESPONSE_MARK`.

    Chat formatters get ``history`` + the user turn + an assistant turn; a one-field formatter (`text`)
    gets the prompt followed by the mark; others get the prompt as their first required field (the
    instruction), ``input`` in an `input`/`context` field, the mark in the remaining required fields,
    and ``fields`` on top.
    """
    messages_field = getattr(formatter.options, "messages_field", None)
    if messages_field:
        turns = [*map(dict, history), {"role": "user", "content": prompt}]
        return {messages_field: [*turns, {"role": "assistant", "content": RESPONSE_MARK}]}
    required = tuple(formatter.required_fields)
    if len(required) == 1:
        return {required[0]: prompt + RESPONSE_MARK}
    example: dict[str, Any] = {name: RESPONSE_MARK for name in required}
    example[required[0]] = prompt
    for name in ("input", "context"):
        if name in required or name in formatter.optional_fields:
            example[name] = input or ""
    example.update(fields or {})
    return example


def prompt_ids(formatter: Any, tokenizer: Any, example: Mapping[str, Any]) -> list[int]:
    """Token ids of ``example``'s rendering up to its response mark, tokenized segment by segment
    (with BOS where the tokenizer adds one), exactly as :meth:`PromptFormatter.encode` does in training."""
    from qlora_kit.formatting.tokens import tokenizer_info

    texts: list[str] = []
    for segment in formatter.render(dict(example)):
        if RESPONSE_MARK in segment.text:
            # Text before the mark in a trained segment (e.g. a leading space) was trained on, so the
            # model generates it; only a one-segment rendering (`text`) needs it as its prompt.
            if not texts or not segment.trained:
                texts.append(segment.text[: segment.text.index(RESPONSE_MARK)])
            break
        texts.append(segment.text)
    else:
        raise UsageError(
            f"{type(formatter).__name__} did not render the response field; pass --field NAME=VALUE"
        )
    info = tokenizer_info(tokenizer)
    ids = [
        tok
        for i, text in enumerate(t for t in texts if t)
        for tok in info.encode_segment(tokenizer, text, first=i == 0)
    ]
    if info.adds_bos and (not ids or ids[0] != info.bos_id):
        ids.insert(0, info.bos_id)
    return ids


def generate(
    loaded: LoadedModel,
    prompt: str,
    *,
    input: str | None = None,
    history: Sequence[Mapping[str, str]] = (),
    fields: Mapping[str, str] | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> str:
    """The model's reply to ``prompt`` (greedy when ``temperature`` is 0), without the stop token."""
    example = build_example(loaded.formatter, prompt, input=input, history=history, fields=fields)
    ids = prompt_ids(loaded.formatter, loaded.tokenizer, example)
    return complete(loaded.model, loaded.tokenizer, [ids], loaded.run_cfg.data.formatter.kind,
                    max_new_tokens=max_new_tokens, temperature=temperature)[0]  # fmt: skip


def complete(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    formatter_kind: str | None,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> list[str]:
    """Completions of already tokenized prompts, batched with left padding, each cut at its first stop token."""
    from qlora_kit.training.evaluation import inference_mode

    stops = eos_token_ids(tokenizer, formatter_kind)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with inference_mode(model):
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=stops, pad_token_id=pad, use_cache=True, **sampling)  # fmt: skip
    texts = []
    for row in out[:, width:].tolist():
        cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return texts


def chat(
    loaded: LoadedModel,
    first: str | None = None,
    *,
    read: Any = input,
    write: Any = print,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> list[dict[str, str]]:
    """Turn-by-turn conversation: each user line is answered with the whole conversation as context.

    Needs a chat formatter (`chatml`, `chat_template`). Ends at an empty line or end of input.

    Returns:
        The conversation's messages.
    """
    if not getattr(loaded.formatter.options, "messages_field", None):
        raise UsageError(
            f"--chat needs a run trained with a chat formatter (chatml, chat_template); "
            f"this one used {loaded.run_cfg.data.formatter.kind!r}"
        )
    history: list[dict[str, str]] = []
    prompt = first
    while True:
        if prompt is None:
            try:
                prompt = read("you> ")
            except EOFError:
                break
        if not prompt.strip():
            break
        reply = generate(
            loaded, prompt, history=history, max_new_tokens=max_new_tokens, temperature=temperature
        )
        write(f"model> {reply}")
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        prompt = None
    return history
