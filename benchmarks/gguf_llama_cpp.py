"""Do GGUF files written by ``qlora_kit.export.gguf_writer`` work in llama.cpp itself? (CPU, manual check)

    pip install llama-cpp-python   # builds llama.cpp from source (about 25 min on 2 cores)
    python benchmarks/gguf_llama_cpp.py [--smollm2]

Writes the tiny test Llama (tied and untied head) and, with ``--smollm2``, the quickstart's SmolLM2-135M
base as F16, BF16 and Q8_0 GGUF files, loads each in llama.cpp (llama-cpp-python), and compares with
transformers: the token ids of a few prompts and of a probe text, and the logits of every position
(mean/max KL, top-1 agreement, max abs difference, as in merge verification).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def llama_cpp_report(path: Path, model, tokenizer, texts: list[str]) -> dict:
    """Tokens and logits of llama.cpp on ``path`` against ``model``/``tokenizer`` (transformers, float32)."""
    from llama_cpp import Llama

    from qlora_kit.export.gguf_verify import TOKENIZER_PROBE
    from qlora_kit.export.verify import compare_logits, logits_of

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=1, verbose=False)
    probes = [*texts, TOKENIZER_PROBE]
    same_tokens = [
        llm.tokenize(t.encode(), add_bos=False, special=True)
        == tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in probes
    ]
    inputs = [tokenizer(t)["input_ids"][:128] for t in texts]
    candidate = []
    for ids in inputs:
        llm.reset()
        llm.eval(ids)
        candidate.append(torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32))
    return {
        "tokens_identical": all(same_tokens),
        "eos_bos": [llm.token_eos(), llm.token_bos()] == [tokenizer.eos_token_id, tokenizer.bos_token_id],
        "chat_template": llm.metadata.get("tokenizer.chat_template") == tokenizer.chat_template,
        # float32 compute on the exported (bf16-rounded) weights, as llama.cpp computes
        "logits": compare_logits(logits_of(copy.deepcopy(model).float(), inputs), candidate),
    }


def models(smollm2: bool):
    """``(name, bf16 model, tokenizer, texts)`` to export."""
    from qlora_kit.testing import make_alpaca_rows, make_tiny_llama, make_tokenizer

    rows = make_alpaca_rows(6, 7)
    tok = make_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    texts = [
        f"### Instruction:\n{r['instruction']}\n\n### Response:\n{r['output']}<|endoftext|>" for r in rows
    ]
    for tied in (False, True):
        yield f"tiny-tied-{tied}", make_tiny_llama(tokenizer=tok, tie_word_embeddings=tied), tok, texts
    if smollm2:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qlora_kit.model.gguf import dequantize_gguf
        from qlora_kit.quickstart import smollm2_gguf

        folder = dequantize_gguf(smollm2_gguf())
        tok = AutoTokenizer.from_pretrained(folder)
        chats = [
            [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
            for r in rows[:4]
        ]
        texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
        yield "smollm2-135m", AutoModelForCausalLM.from_pretrained(folder), tok, texts


def main() -> None:
    from qlora_kit.export.gguf_writer import write_gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also the quickstart's SmolLM2-135M base")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, tok, texts in models(args.smollm2):
            model = model.to(torch.bfloat16)  # as a merged export holds it
            for dtype in ("f16", "bf16", "q8_0"):
                path = write_gguf(model, tok, Path(tmp) / f"{name}-{dtype}.gguf", dtype=dtype)
                report = llama_cpp_report(path, model, tok, texts)
                print(f"{name} {dtype}: {json.dumps(report)}", flush=True)


if __name__ == "__main__":
    main()
