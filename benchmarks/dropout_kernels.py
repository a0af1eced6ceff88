"""One LoRA ``lora_A`` step, compiled, with each dropout form: time per forward + backward and the memory the
forward keeps. Also reports graph breaks. Runs on the CPU (tiny sizes) and on a GPU.

    python benchmarks/dropout_kernels.py [--tokens 4096] [--width 14336] [--iters 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from qlora_kit.model.lora_dropout import LightDropoutLinear, _compiled_dropped_linear


def lora_a(width: int, device: str, p: float) -> LightDropoutLinear:
    layer = torch.nn.Linear(width, 16, bias=False, device=device)
    layer.__class__ = LightDropoutLinear
    layer.dropout_p = p
    layer.seed_base = torch.tensor(7, device=device)
    layer.seed_offset = torch.tensor(3, device=device)
    return layer


FORMS = {
    "none": lambda x, layer: F.linear(x, layer.weight),
    "peft": lambda x, layer: F.linear(F.dropout(x, layer.dropout_p, True), layer.weight),
    "hashed": _compiled_dropped_linear,
}


def measure(form: str, x: torch.Tensor, layer: LightDropoutLinear, iters: int) -> tuple[float, int]:
    fn = torch.compile(FORMS[form])
    device = x.device.type
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):  # compile and warm up
        with torch.autocast(device, dtype=torch.bfloat16):
            fn(x, layer).float().sum().backward()
    sync()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    with torch.autocast(device, dtype=torch.bfloat16):
        out = fn(x, layer)
    kept = (torch.cuda.memory_allocated() - before) if device == "cuda" else 0
    out.float().sum().backward()
    del out
    sync()
    started = time.perf_counter()
    for _ in range(iters):
        with torch.autocast(device, dtype=torch.bfloat16):
            fn(x, layer).float().sum().backward()
    sync()
    return (time.perf_counter() - started) / iters, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--width", type=int, default=14336)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(1, args.tokens, args.width, device=device, dtype=torch.bfloat16, requires_grad=True)
    layer = lora_a(args.width, device, 0.05)
    for form in FORMS:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        seconds, kept = measure(form, x, layer, args.iters)
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        print(f"{form:7s} {seconds * 1e3:8.3f} ms per forward+backward  kept {kept / 2**20:8.1f} MiB  "
              f"graph breaks {breaks}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
