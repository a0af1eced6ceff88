"""Does SDPA's backend choice explain slow steps with variable batch shapes? (GPU experiment)

Runs `qlora-kit train` in this process after choosing which scaled-dot-product-attention backends
torch may use, so the same config can be timed with and without the cuDNN backend:

    python benchmarks/sdpa_shapes.py {default|no-cudnn} CONFIG [overrides...]
"""

from __future__ import annotations

import sys

import torch

from qlora_kit.cli import main

if __name__ == "__main__":
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    print(
        f"sdpa backends: cudnn={torch.backends.cuda.cudnn_sdp_enabled()} "
        f"flash={torch.backends.cuda.flash_sdp_enabled()} mem_efficient={torch.backends.cuda.mem_efficient_sdp_enabled()}"
    )
    raise SystemExit(main(["train", *argv]))
