"""Random-weight models of the W2/W3 shapes, written once per machine as bf16 safetensors.

Llama-3-8B (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256) and
Llama-3.2-1B (hidden 2048, 16 layers, intermediate 8192, tied embeddings), and SmolLM2-135M's shape (the
quickstart's model: hidden 576, 30 layers, for per-step host work); speed does not depend on
weight values, so the weights are N(0, 0.02) (norms 1), drawn on the GPU in bf16 shard by shard and
written straight to safetensors: no module init on the CPU, no fp32 copy. Each directory also holds a
tokenizer (``qlora_kit.testing.make_tokenizer``; Unsloth needs one there) and ``bench_meta.json``.

    python benchmarks/w2_shapes.py --root /tmp/qk-shapes --shapes 1B,8B [--tiny]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),  # SmolLM2-135M
}  # fmt: skip
TINY: dict[str, dict[str, Any]] = {  # --tiny: the same code paths on the CPU in seconds
    "8B": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
    "1B": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "135M": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip
COMMON = dict(rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5)
SHARD_BYTES = 4 * 2**30
META_FILE = "bench_meta.json"
FORMAT = 2
"""Bumped when what is written changes, so a cached directory of an older format is rewritten."""


def shape_dir(root: str | Path, shape: str, tiny: bool) -> Path:
    """Where ``shape`` lives under ``root``."""
    return Path(root) / f"llama-{shape}{'-tiny' if tiny else ''}"


def shape_ready(path: Path) -> bool:
    """``path`` holds a complete shape written in this format (its meta file is written last)."""
    meta = path / META_FILE
    return meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT


def ensure_shape(root: str | Path, shape: str, tiny: bool = False) -> tuple[Path, float]:
    """The model directory of ``shape``, created if missing; returns it and the seconds creation took
    (0 when it was there). Written to a ``.partial`` folder and renamed, so a half-written model is
    never used."""
    path = shape_dir(root, shape, tiny)
    if shape_ready(path):
        return path, 0.0
    started = time.perf_counter()
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _write(partial, shape, tiny)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path, time.perf_counter() - started


def _write(path: Path, shape: str, tiny: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_kit.testing import make_tokenizer

    tokenizer = make_tokenizer(model_max_length=1 << 20)
    row_vocab = len(tokenizer)  # rows use the ordinary tokens, never the pad token added next
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})  # a pad token of its own: no peer adds one
    settings = {**COMMON, **(TINY if tiny else SHAPES)[shape]}
    config = LlamaConfig(**settings, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16", use_cache=False)  # fmt: skip
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    names = {n: tuple(p.shape) for n, p in skeleton.named_parameters()}  # tied weights appear once
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _write_shards(path, names, device)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / META_FILE).write_text(json.dumps({"format": FORMAT, "shape": shape, "tiny": tiny, "row_vocab": row_vocab,
                                              "config": settings}, indent=1), encoding="utf-8")  # fmt: skip


def _write_shards(path: Path, names: dict[str, tuple[int, ...]], device: str) -> None:
    """N(0, 0.02) bf16 tensors (norm weights 1) drawn on ``device``, saved in shards of ~4 GiB, one
    shard in host memory at a time."""
    import math

    import torch
    from safetensors.torch import save_file

    plan: list[list[str]] = [[]]
    size = 0
    for name, shape in names.items():
        nbytes = math.prod(shape) * 2
        if size and size + nbytes > SHARD_BYTES:
            plan.append([])
            size = 0
        plan[-1].append(name)
        size += nbytes
    files = ["model.safetensors"] if len(plan) == 1 else [
        f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))
    ]  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(0)
    for file, shard in zip(files, plan, strict=True):
        tensors = {}
        for name in shard:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(names[name], dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.empty(names[name], dtype=torch.bfloat16, device=device)
                                 .normal_(0, 0.02, generator=gen).cpu())  # fmt: skip
        save_file(tensors, str(path / file), metadata={"format": "pt"})
    if len(files) > 1:
        total = sum(math.prod(s) * 2 for s in names.values())
        weight_map = {name: file for file, shard in zip(files, plan, strict=True) for name in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/qk-shapes")
    ap.add_argument("--shapes", default="1B,8B")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    for shape in args.shapes.split(","):
        path, seconds = ensure_shape(args.root, shape, args.tiny)
        print(
            json.dumps({"shape": shape, "dir": str(path), "created_seconds": round(seconds, 1)}), flush=True
        )


if __name__ == "__main__":
    main()
