"""GGUF verification: reload a written GGUF file with transformers (which dequantizes it) and compare its
logits and tokenizer with the model it was written from (:func:`~qlora_kit.export.gguf_writer.write_gguf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A text that tells pre-tokenizers apart (digits, punctuation runs, spaces, newlines, non-ASCII).
TOKENIZER_PROBE = "Numbers 12345 and 3.14159!!  Two  spaces,\ttab\n\nnew lines; café, naïve, 東京 🙂 don't"


def verify_gguf(
    path: str | Path,
    reference_model: Any,
    tokenizer: Any,
    rows: Any = None,
    *,
    max_mean_kl: float = 0.05,
    min_top1_agreement: float | None = None,
) -> dict[str, Any]:
    """Reload the GGUF file at ``path`` with transformers (which dequantizes it) and compare it with the
    model it was written from: logits on held-out rows, and the tokenizer.

    Args:
        path: The `.gguf` file.
        reference_model: The model it was written from (its dtype is the reload dtype).
        tokenizer: That model's tokenizer.
        rows: Held-out encoded rows (``input_ids``); a few built-in prompts when None.
        max_mean_kl: Fail when the mean per-token KL(reference || GGUF) exceeds it (nats).
        min_top1_agreement: Optionally fail when top-1 agreement is below it.

    Returns:
        A report shaped like ``merge_report.json``'s: ``passed``, ``message``, ``tolerance``, ``prompts``,
        ``prompt_source``, ``logits`` (as :func:`~qlora_kit.export.verify.compare_logits`), ``tokenizer``
        (``encodes_identically``, ``same_eos``, ``same_chat_template``, ...), the file, its size and type.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_kit.export.files import model_device
    from qlora_kit.export.verify import compare_logits, logits_of, verification_inputs
    from qlora_kit.model.gguf import gguf_origin_metadata

    path = Path(path)
    dtype = next(reference_model.parameters()).dtype
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, device_map={"": str(model_device(reference_model))}
    )
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    inputs = verification_inputs(tokenizer, rows)
    logits = compare_logits(logits_of(reference_model, inputs), logits_of(loaded, inputs))
    del loaded
    tokens = _compare_tokenizers(tokenizer, loaded_tokenizer, inputs)
    failures = [f"mean KL {logits['mean_kl']:.3g} > {max_mean_kl}"] if logits["mean_kl"] > max_mean_kl else []
    if min_top1_agreement is not None and logits["top1_agreement"] < min_top1_agreement:
        failures.append(f"top-1 agreement {logits['top1_agreement']:.1%} < {min_top1_agreement:.1%}")
    failures += [
        f"tokenizer: {check.replace('_', ' ')} is False" for check, ok in tokens.items() if ok is False
    ]
    file_type = gguf_origin_metadata(path).get("file_type")
    what = f"GGUF {file_type} {path.name}"
    message = (
        f"GGUF VERIFICATION FAILED ({what}): {'; '.join(failures)}"
        if failures
        else f"GGUF verified ({what}): mean KL {logits['mean_kl']:.3g} <= {max_mean_kl}, top-1 agreement "
        f"{logits['top1_agreement']:.1%}, max |logit diff| {logits['max_abs_logit_diff']:.4g}; tokenizer identical"
    )
    return {
        "passed": not failures,
        "message": message,
        "file": path.name,
        "bytes": path.stat().st_size,
        "gguf_dtype": file_type,
        "reload_dtype": str(dtype).removeprefix("torch."),
        "tolerance": {"max_mean_kl": max_mean_kl, "min_top1_agreement": min_top1_agreement},
        "prompts": len(inputs),
        "prompt_source": "held-out rows" if rows is not None and len(rows) > 0 else "built-in prompts",
        "logits": logits,
        "tokenizer": tokens,
    }


def _compare_tokenizers(reference: Any, loaded: Any, inputs: list[list[int]]) -> dict[str, Any]:
    """Whether ``loaded`` encodes the verification texts (and a probe text) as ``reference`` does, with and
    without special tokens, and has the same EOS, BOS and chat template."""
    texts = [reference.decode(ids) for ids in inputs] + [TOKENIZER_PROBE]
    mismatched = sum(
        reference(text, add_special_tokens=special)["input_ids"]
        != loaded(text, add_special_tokens=special)["input_ids"]
        for text in texts
        for special in (False, True)
    )
    return {
        "encodes_identically": mismatched == 0,
        "mismatched_encodings": mismatched,
        "texts": len(texts),
        "same_eos": (reference.eos_token, reference.eos_token_id) == (loaded.eos_token, loaded.eos_token_id),
        "same_bos": (reference.bos_token, reference.bos_token_id) == (loaded.bos_token, loaded.bos_token_id),
        "same_chat_template": (reference.chat_template or None) == (loaded.chat_template or None),
    }
