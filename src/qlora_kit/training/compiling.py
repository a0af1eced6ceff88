"""`train.compile`: each decoder layer compiled with torch.compile ("regional" compilation).

A small model's step is bound by the host: every LoRA layer runs a dozen small ops (4-bit dequantisation,
matmuls, dropout, scaling, adds) and each is a Python call and a kernel launch. Compiling each decoder layer
fuses them into a few kernels per layer. The layers of a model are alike, so one compilation serves them
all; the 4-bit matmul of bitsandbytes traces without graph breaks (tests/integration/test_compile.py).

Costs: compilation in the first steps (tens of seconds, less with inductor's cache warm) and again when a
pass's shape changes (torch then compiles a dynamic-shape graph once). Not combined with activation
offloading: the two have not been tested together, so compilation is skipped when offloading is on.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def compile_decoder_layers(model: Any, offloading: bool) -> int:
    """Compile each decoder layer of ``model`` in place; returns how many were compiled (0 when skipped).

    Args:
        model: a transformers causal LM, PEFT-wrapped or not, whose decoder layers subclass
            ``GradientCheckpointingLayer`` (transformers 5.x).
        offloading: activation offloading is on; compilation is then skipped, with a warning.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if offloading:
        logger.warning("train.compile: skipped, activation offloading is on (the two are not combined)")
        return 0
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile()  # nn.Module.compile: its __call__ runs the compiled forward, checkpointing kept
    logger.info(
        "train.compile: %d decoder layers compiled (the first steps include compilation)", len(layers)
    )
    return len(layers)
