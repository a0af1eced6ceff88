"""What speeds a run's decoder layers up: compiled (:mod:`~qlora_kit.training.compiling`), recorded as CUDA
graphs (:mod:`~qlora_kit.training.layer_graphs`), or both, as the ``train`` section asks and the device allows."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import torch

from qlora_kit.compat import decoder_layers
from qlora_kit.data.collate import bucketed_widths
from qlora_kit.training import layer_graphs
from qlora_kit.training.compiling import compile_if_wanted, copy_gradients_out, uses_cuda_graphs
from qlora_kit.training.layer_graphs import LayerGraphs, checkpointed_layer, recurring_widths

logger = logging.getLogger(__name__)


def speed_up_layers(
    model: Any, cfg: Any, device: torch.device, offloading: bool
) -> tuple[bool, LayerGraphs | None]:
    """Compile ``model``'s decoder layers and/or record them as CUDA graphs, as the ``train`` section
    ``cfg`` asks (``compile``, ``cuda_graphs``) and this device allows. ``cuda_graphs: true`` with
    ``compile: auto`` keeps the layers eager, so they can be recorded (an explicit ``compile: true``
    records nothing: its layers are compiled). Returns whether compiled layers record CUDA graphs
    (``compile: cuda_graphs``; the loop then marks each pass) and the recorder of eager layers, if any."""
    setting = False if cfg.cuda_graphs is True and cfg.compile == "auto" else cfg.compile
    compiled = bool(compile_if_wanted(model, setting, device, offloading=offloading))
    graphs = graph_layers_if_wanted(model, cfg.cuda_graphs, device, compiled=compiled)
    return compiled and uses_cuda_graphs(setting, device), graphs


def graph_layers_if_wanted(
    model: Any, wanted: bool | str, device: torch.device, *, compiled: bool
) -> LayerGraphs | None:
    """Install :class:`LayerGraphs` on ``model``'s decoder layers if ``train.cuda_graphs`` (``wanted``) can
    be honoured here; otherwise say why not (a warning for ``true``, an info line for ``auto``) and return
    None."""
    if not wanted:
        return None
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate / torchrun for every process
    why_not = (
        f"CUDA only (this run is on {device.type})" if device.type != "cuda"
        else "the layers are compiled (train.compile: false records them; cuda_graphs compiles and records)"
        if compiled
        else f"one process only ({processes} here; not tested under DDP / FSDP)" if processes > 1
        else None
    )  # fmt: skip
    say = logger.warning if wanted is True else logger.info
    if why_not:
        say("train.cuda_graphs: off: %s", why_not)
        return None
    copy_gradients_out(model)
    layers = decoder_layers(model)
    checkpointed = sum(checkpointed_layer(layer) for layer in layers)
    if checkpointed:
        say("train.cuda_graphs: %d of %d decoder layers are checkpointed and run eagerly "
            "(set train.grad_checkpointing: false to record them all)", checkpointed, len(layers))  # fmt: skip
    graphs = LayerGraphs(layers)
    logger.info(
        "train.cuda_graphs: %d decoder layers recorded at the second pass of each shape",
        len(layers) - checkpointed,
    )
    return graphs


def passes_for_graphs(graphs: LayerGraphs | None, collate_fn: Any, layout: Any, total_steps: int) -> Any:
    """The collator for a run whose layers are recorded (``graphs``) under a token budget: packed passes
    filled to four widths (:func:`~qlora_kit.data.collate.bucketed_widths`), then the widths the run's
    ``total_steps`` (laid out by ``layout``) meet fewer than ``MIN_RECORDED_PASSES`` times dropped, their
    passes filled to the next width (a replay of a wider recording costs less than an eager pass of a new
    shape: W1's two 960-token passes). Only widths met often enough are recorded. Other runs keep
    ``collate_fn``."""
    if graphs is None or not layout.memory.budget:
        return collate_fn
    bucketed = bucketed_widths(collate_fn, layout.memory.budget)
    counts = layout.pass_widths(bucketed.tokens, total_steps)
    widths = getattr(bucketed, "widths", ())
    if widths:  # the widest stays: every pass must fit one
        common = tuple(
            w for w in widths if counts.get(w, 0) >= layer_graphs.MIN_RECORDED_PASSES or w == widths[-1]
        )
        if common != widths:
            bucketed = replace(bucketed, widths=common)
            counts = layout.pass_widths(bucketed.tokens, total_steps)
    graphs.worth_recording = recurring_widths(counts)
    return bucketed
