"""What the planner chooses for W2-8B (2 x 2,048 tokens, the harness's config) under memory budgets, with
PEFT's dropout in compiled layers and with the hashed light dropout (``LightDropoutLinear.in_compiled``).
Config.json only, on the CPU; predictions, not measurements.

    python benchmarks/plan_budgets.py [--budgets none,16,15.9,13.5]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import plan_check as pc

from qlora_kit.planning.from_config import adapter_of
from qlora_kit.planning.plan import plan_run, shape_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="none,16,15.9,13.5")
    args = parser.parse_args()
    path = pc.write_shape(Path(tempfile.mkdtemp()), "8B")
    for light in (False, True):
        for item in args.budgets.split(","):
            budget = None if item == "none" else float(item)
            cfg = pc.run_config(path, 2, 2048, 0.05, True, budget)
            adapter = replace(adapter_of(cfg, shape_of(cfg)), light_in_compiled=light)
            plan = plan_run(cfg, gpu_memory_gib=pc.H200_GIB, seq_tokens=2048, host_memory_gib=pc.HOST_GIB,
                            adapter=adapter)  # fmt: skip
            layers = plan.settings.checkpoint_layers if plan.settings.grad_checkpointing else 0
            print(f"light dropout in compiled layers {light!s:5}  budget {item:>5} GiB: "
                  f"peak {plan.memory.peak_allocated / 2**30:5.1f} GiB, {plan.speed.tokens_per_s:6,.0f} tokens/s, "
                  f"{layers if layers is not None else 'all'} layers checkpointed")  # fmt: skip


if __name__ == "__main__":
    main()
