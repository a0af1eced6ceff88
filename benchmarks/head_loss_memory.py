"""Peak memory and time of one loss + backward: the standard loss vs the chunked loss (CPU or CUDA).

Each variant runs in a fresh subprocess. On the CPU the peak is the growth of the resident set during
the step: the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs just before it,
so earlier peaks (model construction) do not hide it, and glibc is told to return freed blocks
(``MALLOC_MMAP_THRESHOLD_``) so the resident set follows what torch holds. On CUDA it is ``max_memory_allocated`` growth.

    OMP_NUM_THREADS=1 python benchmarks/head_loss_memory.py [--device cpu] [--tokens 2048] [--vocab 32000]
        [--hidden 256] [--supervised 1.0] [--repeats 3]

A 2-layer Llama (fp32 on the CPU, bf16 on CUDA) with LoRA r=8 on every linear layer but the head,
one row of ``--tokens`` tokens of which the last ``--supervised`` fraction are labels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from qlora_kit.model.adapters import AdapterBuilder

VARIANTS = ["backbone", "standard", "chunked", "chunked:256"]
"""``backbone`` is the floor: the same forward + backward without the head (loss = sum of hidden states)."""


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _build(args: argparse.Namespace):
    import torch

    from qlora_kit.testing import make_tiny_llama

    model = make_tiny_llama(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=args.tokens,
    )  # fmt: skip
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = model.to(args.device, dtype).requires_grad_(False)
    model = AdapterBuilder(AdapterBuilder.Config(r=8, dropout=0.0)).apply(model).train()
    ids = torch.randint(1, args.vocab, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : int(args.tokens * (1 - args.supervised))] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    return model, {k: v.to(args.device) for k, v in batch.items()}


def _loss_fn(variant: str):
    from qlora_kit.training.head_loss import chunked_causal_lm_loss
    from qlora_kit.training.loss import causal_lm_loss

    if variant == "standard":
        return causal_lm_loss
    if variant == "backbone":
        from qlora_kit.training.head_split import final_hidden_states

        return lambda model, batch: final_hidden_states(model, batch).hidden.float().sum()
    chunk = int(variant.split(":")[1]) if ":" in variant else None
    return lambda model, batch: chunked_causal_lm_loss(model, batch, chunk_tokens=chunk)


def _step(model, batch, loss_fn, device: str) -> float:
    import torch

    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = loss_fn(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def measure(args: argparse.Namespace) -> dict:
    """One variant, in this process: peak growth (MiB) of the first step, then the median step time."""
    import torch

    model, batch = _build(args)
    loss_fn = _loss_fn(args.variant)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current resident set
        base = _rss_kib("VmRSS") * 1024
    loss = _step(model, batch, loss_fn, args.device)
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024) - base
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        _step(model, batch, loss_fn, args.device)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {
        "variant": args.variant,
        "loss": loss,
        "peak_mib": peak / 2**20,
        "step_s": statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--supervised", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the subprocess
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)))
        return
    print(f"{args.tokens} tokens ({args.supervised:.0%} supervised), vocab {args.vocab}, hidden {args.hidden}, "
          f"{args.device}")  # fmt: skip
    # glibc raises its mmap threshold (up to 32 MiB) after freeing large blocks, and then keeps freed
    # chunk-sized blocks in the heap: the resident set would count memory torch has released.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    print(f"{'variant':<14} {'loss':>10} {'peak MiB':>10} {'step s':>8}")
    for variant in args.variants:
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant],
            check=True, capture_output=True, text=True, env=env,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['variant']:<14} {r['loss']:>10.3f} {r['peak_mib']:>10.1f} {r['step_s']:>8.3f}")


if __name__ == "__main__":
    main()
