"""Which scaled-dot-product-attention backend is fastest for one long causal row? (GPU experiment)

The 8B Llama shape's attention (32 query heads, 8 key/value heads, head dim 128, bf16, batch 1): for
each backend torch offers, forward and forward+backward time at several lengths, with the key/value
heads shared through ``enable_gqa`` (what transformers passes when there is no mask) and repeated
(``repeat_kv``). Also the pinned host<->device copy rate the offloading planner assumes. Prints one
JSON line per measurement::

    python benchmarks/sdpa_long.py [--lengths 16384,65536,131072] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def attention(q, k, v, gqa: bool):
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rep = HEADS // KV_HEADS
    return F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=True
    )


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and the backend's first-shape cost)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(backend: str, seq: int, gqa: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(1, HEADS, seq, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, KV_HEADS, seq, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, KV_HEADS, seq, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(1, HEADS, seq, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    row = {"backend": backend, "seq": seq, "gqa": gqa}
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            with torch.no_grad():
                fwd = timed(lambda: attention(q, k, v, gqa), repeats)
            both = timed(lambda: attention(q, k, v, gqa).backward(grad), repeats)
    except Exception as exc:  # a backend that does not support the shape says so
        return {**row, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    flops = 4 * seq * seq * HEAD_DIM * HEADS / 2  # causal forward: QK^T and AV, half masked
    return {**row, "fwd_s": round(fwd, 4), "fwd_bwd_s": round(both, 4),
            "fwd_tflops": round(flops / fwd / 1e12, 1), "fwd_bwd_tflops": round(3.5 * flops / both / 1e12, 1)}  # fmt: skip


def copy_rate(gib: float = 2.0) -> dict:
    n = int(gib * 2**30 // 2)
    dev = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    host = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)
    d2h = timed(lambda: host.copy_(dev, non_blocking=True), 3)
    h2d = timed(lambda: dev.copy_(host, non_blocking=True), 3)
    return {"copy_gib": gib, "d2h_gbps": round(2 * n / d2h / 1e9, 1), "h2d_gbps": round(2 * n / h2d / 1e9, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="16384,65536,131072")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                      "device": torch.cuda.get_device_name()}), flush=True)  # fmt: skip
    print(json.dumps(copy_rate()), flush=True)
    for seq in (int(s) for s in args.lengths.split(",")):
        for backend in BACKENDS:
            for gqa in (True, False):
                print(json.dumps(measure(backend, seq, gqa, args.repeats)), flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
