"""`train.compile`: each decoder layer compiled with torch.compile ("regional" compilation).

Every LoRA layer runs a dozen small ops (4-bit dequantisation, matmuls, dropout, scaling, adds), each a
Python call and a kernel launch. Compiling each decoder layer fuses them into a few kernels per layer. The
layers of a model are alike, so one compilation serves them all; the 4-bit matmul of bitsandbytes traces
without graph breaks (tests/integration/test_compile.py).

What measurement says (benchmarks/RESULTS.md, one H200, runs 2026-11-30h-j): the 8B shape +32% tokens/s and
the 1B shape +9% to +23%, after 18-23 s of compilation in the first step; distilgpt2's W1 job gained nothing (a 6-layer, 768-wide model
whose step is bound by work outside the layers). On 2 CPU cores SmolLM2-135M's step got slower. Hence
``auto``: on for CUDA models at least :data:`AUTO_MIN_HIDDEN` wide, off otherwise.

``cuda_graphs`` compiles the layers with CUDA graphs too (torch.compile's "reduce-overhead" mode): each
layer's kernels are recorded once per pass shape and replayed with one launch, which removes most of the
host's work per pass. It pays where the host bounds the step and passes repeat one shape (``data.padding:
max_length``): SmolLM2-135M's step (8 x 32 tokens, H200, benchmarks/gpu/call28a.sh) took 0.27 s eager,
0.13 s compiled and 0.039 s with CUDA graphs. Each new shape records new graphs, so shapes that change
every pass lose most of the gain. On other devices it is ``auto``. Two things the loop does for it: marks
the start of each pass (:func:`begin_pass`), and has each trainable parameter's gradient copied out of
the graphs' memory (:func:`copy_gradients_out`): a later pass's replay would otherwise overwrite a
gradient still being accumulated (pytorch/pytorch#169545); here in every step (the one-pass
shortcut of :class:`GradientCopies` is measured for ``train.cuda_graphs`` only). The GPU test of accumulation over passes (tests/gpu/test_gpu_compile.py) passes
(call 33a). The quickstart with every pass padded to 64 tokens scored 61/64 this way (call 29, cause not
found); ``train.cuda_graphs`` (:mod:`~qlora_kit.training.layer_graphs`) records the eager layers instead,
without compilation, and is what the quickstart uses (64/64).

Costs: compilation in the first steps (tens of seconds, less with inductor's cache warm) and again when a
pass's shape changes (torch then compiles a dynamic-shape graph once). Evaluation runs the layers eagerly:
a no-grad graph would be one more compilation for a few passes. Not combined with activation offloading:
the two have not been tested together, so compilation is skipped when offloading is on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from qlora_kit.compat import decoder_layers

logger = logging.getLogger(__name__)

AUTO_MIN_HIDDEN = 2048
"""``train.compile: auto`` compiles models with a hidden size at least this (the 1B shape, the smallest
measured to gain: +9% to +23%)."""

CUDA_GRAPHS = "cuda_graphs"
"""The ``train.compile`` setting that compiles with CUDA graphs (see the module docstring)."""

COMPILE_MODE: str | None = None
"""torch.compile's ``mode`` for the decoder layers where ``train.compile`` does not choose one (None: its
default; the benchmarks' W2 worker sets it from ``QK_BENCH_COMPILE_MODE``)."""

RECOMPILE_LIMIT = 32
"""Graphs torch may compile per layer function: the first layer (its input needs no gradient) and the
others, padded and packed passes (with and without a mask), static then dynamic shapes; torch's default
of 8 was reached on W1, after which it silently runs eagerly."""


def wants_compile(
    setting: bool | str, model: Any, device: torch.device, offloading: bool
) -> tuple[bool, str]:
    """Whether ``train.compile`` (``True``, ``False`` or ``"auto"``) compiles this model, and why."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None) or 0
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate / torchrun for every process
    return compile_decision(setting, hidden, device.type, offloading, processes)


def compile_decision(
    setting: bool | str, hidden: int, device_type: str, offloading: bool, processes: int = 1
) -> tuple[bool, str]:
    """:func:`wants_compile` from the model's hidden size, the device type and the number of training
    processes (the planner has no model). ``auto`` stays off under DDP / FSDP: not measured there."""
    if setting is not True and setting not in ("auto", CUDA_GRAPHS):
        return False, "off"
    if offloading:
        return False, "skipped: activation offloading is on (the two are not combined)"
    if setting is True:
        return True, "on"
    if setting == CUDA_GRAPHS:
        if device_type == "cuda":
            return (
                True,
                "cuda_graphs: on, with CUDA graphs (recorded per pass shape: data.padding: max_length keeps one)",
            )
        decided, why = compile_decision("auto", hidden, device_type, offloading, processes)
        return decided, f"cuda_graphs: CUDA only, so {why}"
    if device_type != "cuda":
        return False, f"auto: off on {device_type} (it pays on CUDA only)"
    if processes > 1:
        return False, f"auto: off with {processes} processes (not measured under DDP / FSDP; set true to try)"
    if hidden < AUTO_MIN_HIDDEN:
        return False, f"auto: off (hidden size {hidden} < {AUTO_MIN_HIDDEN}: the step is bound elsewhere)"
    return True, f"auto: on (CUDA, hidden size {hidden} >= {AUTO_MIN_HIDDEN})"


def compile_if_wanted(model: Any, setting: bool | str, device: torch.device, offloading: bool) -> int:
    """Compile ``model``'s decoder layers if ``train.compile`` (``setting``) wants it here, saying why in
    the log; returns how many layers were compiled."""
    compiling, why = wants_compile(setting, model, device, offloading)
    if setting is not False:
        logger.info("train.compile: %s", why)
    if not compiling:
        return 0
    graphs = uses_cuda_graphs(setting, device)
    if graphs:
        copy_gradients_out(model)
    return compile_decoder_layers(model, "reduce-overhead" if graphs else COMPILE_MODE)


def uses_cuda_graphs(setting: bool | str, device: torch.device) -> bool:
    """Whether ``train.compile`` (``setting``) records CUDA graphs on ``device``."""
    return setting == CUDA_GRAPHS and device.type == "cuda"


def begin_pass() -> None:
    """Mark a new training pass for CUDA graphs: the previous pass's graph outputs are no longer needed,
    so the next replay may reuse their memory (without it, torch takes its slow path: "pending, uninvoked
    backwards")."""
    torch.compiler.cudagraph_mark_step_begin()


class GradientCopies:
    """Whether the hooks of :func:`copy_gradients_out` copy: only a step of several passes needs it (with one
    pass, the optimizer reads ``.grad`` before the next replay, and a copy per parameter would cost a
    kernel launch each). The loop sets :attr:`several_passes` before each step."""

    several_passes: bool = True


def copy_gradients_out(model: Any) -> int:
    """Hook every trainable parameter of ``model`` so the gradient it accumulates is a copy while a step
    has several passes (:class:`GradientCopies`): a CUDA graph's backward returns gradients in the graph's
    own memory, which the next pass's replay overwrites, so accumulating over passes would silently go
    wrong (pytorch/pytorch#169545). Returns how many were hooked. A parameter is hooked once, however often
    the model is trained again.
    """
    hooked = 0
    for param in model.parameters():
        if param.requires_grad and not getattr(param, "_qlora_kit_grad_copied", False):
            param.register_hook(_copy_when_accumulating)
            param._qlora_kit_grad_copied = True
            hooked += 1
    return hooked


def _copy_when_accumulating(grad: torch.Tensor) -> torch.Tensor:
    return grad.clone() if GradientCopies.several_passes else grad


def compile_decoder_layers(model: Any, mode: str | None = None) -> int:
    """Compile each decoder layer of ``model`` in place; returns how many were compiled.

    Args:
        model: a transformers causal LM, PEFT-wrapped or not, whose decoder layers subclass
            ``GradientCheckpointingLayer`` (transformers 5.x).
        mode: torch.compile's ``mode`` (default: :data:`COMPILE_MODE`).
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    layers = decoder_layers(model)
    mode = mode or COMPILE_MODE
    options = {"mode": mode} if mode else {}
    for layer in layers:  # nn.Module.compile: its __call__ runs the compiled forward, checkpointing kept
        layer.compile(**options)
    logger.info(
        "train.compile: %d decoder layers compiled (the first steps include compilation)", len(layers)
    )
    return len(layers)
