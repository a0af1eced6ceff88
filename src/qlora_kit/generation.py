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

from qlora_kit.config.io import RUN_CONFIG_FILE
from qlora_kit.decoding import Sampling, complete
from qlora_kit.errors import CheckpointError, ModelLoadError, QloraKitError, UsageError, first_line
from qlora_kit.formatting.base import RESPONSE_MARK


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
        QloraKitError: nothing loadable at ``path``.
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
    raise QloraKitError(
        f"{path}: no exported model here (expected adapter/ or merged/ from `qlora-kit train` or "
        f"`qlora-kit export`, or such a directory itself)"
    )


def load_exported(
    path: str | Path, prefer: str | None = None, device: str | None = None, *, allow_code: bool = False
) -> LoadedModel:
    """Load an exported adapter (onto its base, quantized as in training) or merged model.

    The export is checked against its manifest first, so a damaged file is named before loading.

    Args:
        path: A run's output dir, or its ``adapter/`` or ``merged/`` dir.
        prefer: ``adapter`` or ``merged`` when a run dir holds both.
        device: Where to run; default ``cuda:0`` when available, else CPU.
        allow_code: Import the run config's plugins and trust its model code (``--trust-code``).
    """
    from qlora_kit.config.io import load_run_config
    from qlora_kit.formatting import build_formatter
    from qlora_kit.model.loading import resolve_device

    path, kind = resolve_export_dir(path, prefer)
    run_cfg = load_run_config(path / RUN_CONFIG_FILE, allow_code=allow_code)
    require_intact_export(path)
    if kind == "adapter":
        model, tokenizer = load_adapter_model(path, run_cfg, device)
    else:
        import torch
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
        if target.type == "cpu" and next(model.parameters()).dtype == torch.float16:
            model = model.float()  # float16 matmuls are emulated on a CPU: ~35x slower than float32
    model.eval()
    formatter = build_formatter(run_cfg.data.formatter, tokenizer)
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


def require_intact_export(path: Path) -> None:
    """Check an export (or checkpoint) directory against its manifest, naming a damaged file.

    Raises:
        CheckpointError: a file is missing, truncated or changed; says how to get a good copy.
    """
    from qlora_kit.rundir.manifest import MANIFEST, verify_manifest

    manifest_dir = path if (path / MANIFEST).is_file() else path.parent  # a checkpoint's adapter/
    if not (manifest_dir / MANIFEST).is_file():
        return  # written before manifests existed: nothing to check against
    problems = [p for p in verify_manifest(manifest_dir) if str(path) in p]
    if problems:
        raise CheckpointError(
            f"{path} is damaged: {problems[0]}. Export it again from the run (qlora-kit export RUN_DIR), or "
            "use an earlier checkpoint's adapter/"
        )


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
    if info.needs_bos(ids):
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
    sampling: Sampling | None = None,
) -> str:
    """The model's reply to ``prompt`` (greedy unless ``sampling`` says otherwise), without the stop token."""
    example = loaded.formatter.prompt_example(prompt, input=input, history=history, fields=fields)
    ids = prompt_ids(loaded.formatter, loaded.tokenizer, example)
    stops = loaded.formatter.stop_token_ids(loaded.tokenizer)
    return complete(loaded.model, loaded.tokenizer, [ids], stops,
                    max_new_tokens=max_new_tokens, sampling=sampling)[0]  # fmt: skip


def chat(
    loaded: LoadedModel,
    first: str | None = None,
    *,
    read: Any = input,
    write: Any = print,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
) -> list[dict[str, str]]:
    """Turn-by-turn conversation: each user line is answered with the whole conversation as context.

    Needs a chat formatter (`chatml`, `chat_template`). Ends at an empty line or end of input.

    Returns:
        The conversation's messages.
    """
    if not loaded.formatter.chat:
        raise UsageError(
            f"--chat needs a run trained with a chat formatter (chatml, chat_template); "
            f"this one used {getattr(loaded.formatter.options, 'kind', type(loaded.formatter).__name__)!r}"
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
        reply = generate(loaded, prompt, history=history, max_new_tokens=max_new_tokens, sampling=sampling)
        write(f"model> {reply}")
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        prompt = None
    return history
