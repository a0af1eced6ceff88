"""Public test kit: tiny models, a tokenizer and Alpaca rows built in code (no network, no files).

Use it to test your own formatter or plugin the way the library tests itself::

    from qlora_kit.testing import make_tokenizer, make_tiny_llama, make_alpaca_rows
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

_SUBJECTS = [
    "the cat",
    "a robot",
    "my teacher",
    "the river",
    "an engineer",
    "the moon",
    "a farmer",
    "the city",
]
_VERBS = ["describes", "counts", "paints", "builds", "explains", "measures", "finds", "writes"]
_OBJECTS = [
    "a poem",
    "three apples",
    "the sky",
    "a bridge",
    "the answer",
    "a small boat",
    "the stars",
    "a map",
]

EOS_TOKEN = "<|endoftext|>"


def make_alpaca_rows(n: int = 32, seed: int = 0, with_input_every: int = 3) -> list[dict[str, str]]:
    """``n`` Alpaca-format rows (instruction, input, output); every ``with_input_every``-th has an input."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
        words = " ".join(rng.choice(_OBJECTS) for _ in range(rng.randint(1, 6)))
        rows.append(
            {
                "instruction": f"Say what {subject} {verb}.",
                "input": f"Context {i}: {words}." if with_input_every and i % with_input_every == 0 else "",
                "output": f"{subject.capitalize()} {verb} {obj}." + " Indeed." * rng.randint(0, 4),
            }
        )
    return rows


def make_tokenizer(vocab_size: int = 384, model_max_length: int = 512) -> Any:
    """A byte-level BPE tokenizer trained in code on generated text (eos = bos = ``<|endoftext|>``,
    no pad token, like GPT-2). Any text can be encoded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(r.values()) for r in make_alpaca_rows(400, seed=1)]
    corpus += ["Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:"] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, model_max_length=model_max_length
    )


def make_tiny_llama(path: str | Path | None = None, tokenizer: Any = None, **overrides: Any) -> Any:
    """A 2-layer random Llama (hidden 64) sized to ``tokenizer``; saved with it to ``path`` if given."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    settings.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    if path is not None:
        _save(model, tokenizer, path)
    return model


def make_distilgpt2_shape(path: str | Path | None = None, tokenizer: Any = None, **overrides: Any) -> Any:
    """A random GPT-2 with distilgpt2's shape (6 layers, 768 wide, 50,257 tokens: 81,912,576 parameters).

    ``tokenizer`` is only saved beside it; pass the GPT-2 tokenizer for the real vocabulary.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    settings: dict[str, Any] = dict(n_layer=6, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    settings.update(overrides)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**settings))
    if path is not None:
        _save(model, tokenizer, path)
    return model


def _save(model: Any, tokenizer: Any, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def check_formatter(
    formatter: Any, rows: list[dict[str, Any]], tokenizer: Any, max_length: int = 4096
) -> int:
    """Check a PromptFormatter against the contract on ``rows``; raise AssertionError listing every problem.

    Per row: ``check`` accepts it, ``render`` returns Segments deterministically with at least one
    trained, non-empty segment; ``encode`` gives labels aligned with ``input_ids`` in which exactly
    the trained segments' tokens and the final EOS are trained, the tokens decode to the rendered text,
    BOS is not doubled; and ``train_on_inputs=True`` trains every token but the first.

    Returns:
        The number of rows checked.
    """
    from qlora_kit.formatting import Segment

    formatter.bind(tokenizer)  # formats that render with the tokenizer (chat_template) need it
    problems: list[str] = []
    for i, row in enumerate(rows):
        try:
            formatter.check(row)
            segments = formatter.render(row)
        except Exception as exc:  # the contract is what is being tested: report, do not stop
            problems.append(f"row {i}: check/render raised {type(exc).__name__}: {exc}")
            continue
        if not isinstance(segments, list) or not all(isinstance(s, Segment) for s in segments):
            problems.append(f"row {i}: render must return list[Segment], got {segments!r}")
            continue
        if segments != formatter.render(row):
            problems.append(f"row {i}: render is not deterministic")
        if not any(s.trained and s.text for s in segments):
            problems.append(f"row {i}: no trained, non-empty segment (nothing to learn)")
        problems += [
            f"row {i}: {p}" for p in _encoding_problems(formatter, row, segments, tokenizer, max_length)
        ]
    if problems:
        raise AssertionError(
            f"{type(formatter).__name__} breaks the formatter contract:\n  " + "\n  ".join(problems)
        )
    return len(rows)


def _encoding_problems(
    formatter: Any, row: dict[str, Any], segments: list, tokenizer: Any, max_length: int
) -> list[str]:
    from qlora_kit.formatting import IGNORE_INDEX

    squash = lambda s: "".join(s.split())  # noqa: E731  (tokenizers may normalise whitespace)
    enc = formatter.encode(row, tokenizer, max_length=max_length)
    ids, labels = enc.input_ids, enc.labels
    problems = []
    if enc.dropped or enc.truncated:
        return [f"example was dropped or truncated at max_length {max_length}; pass a larger max_length"]
    if len(ids) != len(labels):
        problems.append(f"{len(ids)} input_ids but {len(labels)} labels")
    if any(label not in (IGNORE_INDEX, tok) for tok, label in zip(ids, labels, strict=False)):
        problems.append("a label differs from its input id (labels must be input ids or -100)")
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos is not None and (ids[-1] != eos or labels[-1] != eos):
        problems.append("the example does not end with a trained EOS")
    if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
        problems.append("double BOS at the start")
    trained = [t for t, label in zip(ids, labels, strict=False) if label != IGNORE_INDEX]
    expected = "".join(s.text for s in segments if s.trained)
    got = tokenizer.decode(trained[:-1] if eos is not None and trained and trained[-1] == eos else trained)
    if squash(got) != squash(expected) and not squash(expected).endswith(squash(got)):
        problems.append(f"trained tokens decode to {got!r}, expected the trained segments {expected!r}")
    text = tokenizer.decode(ids, skip_special_tokens=True)
    rendered = "".join(s.text for s in segments)
    if squash(text) != squash(
        tokenizer.decode(tokenizer(rendered, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    ):
        problems.append("input_ids do not decode to the rendered text")
    full = formatter.encode(row, tokenizer, max_length=max_length, train_on_inputs=True)
    if full.labels[1:] != full.input_ids[1:]:
        problems.append("train_on_inputs=True leaves tokens other than the first untrained")
    return problems


def make_tiny_gguf(path: str | Path, tokenizer: Any = None, **overrides: Any) -> Any:
    """Write :func:`make_tiny_llama` (float32 tensors) and its tokenizer as a llama GGUF file at
    ``path``, the way llama.cpp's converter lays it out. Returns the model it holds."""
    import json

    import gguf
    import numpy as np

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    model = make_tiny_llama(tokenizer=tokenizer, **overrides)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    special = set(tokenizer.all_special_ids)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokenizer))])  # 3 = control
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if name.endswith("q_proj.weight"):  # llama.cpp stores q/k rows permuted for its RoPE layout
            array = _permute_for_gguf(array, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _permute_for_gguf(array, cfg.num_key_value_heads)
        writer.add_tensor(
            names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(array)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def _permute_for_gguf(weights: Any, n_head: int) -> Any:
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def perturb_lora(model: Any, std: float = 0.05, seed: int = 1) -> Any:
    """Give every ``lora_B`` matrix random values (PEFT initialises them to zero), so an adapter
    changes the model's outputs: what export, merge and reload tests need to see a difference."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def checkpoint_tensors(checkpoint: str | Path) -> dict[str, Any]:
    """The trained tensors saved in a checkpoint (PEFT's adapter file), by PEFT's key names."""
    from safetensors.torch import load_file

    return load_file(str(Path(checkpoint) / "adapter" / "adapter_model.safetensors"))


def adapter_tensors(model: Any) -> dict[str, Any]:
    """A copy of ``model``'s adapter tensors by PEFT's key names (compare with :func:`checkpoint_tensors`)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def lora_step(
    model: Any, tokens: int = 24, ids_seed: int = 7, dropout_seed: int = 8
) -> tuple[Any, dict[str, Any]]:
    """One forward and backward pass of ``model`` on 2 rows of random ids: the loss and a copy of every
    trainable gradient (then zeroed). Seeds fix the ids and, separately, the dropout masks."""
    import torch

    torch.manual_seed(ids_seed)
    ids = torch.randint(0, 300, (2, tokens))
    torch.manual_seed(dropout_seed)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads
