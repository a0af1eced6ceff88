"""Random-number-generator state as tensors and JSON, never pickle.

A resumed run must draw the same dropout masks as an uninterrupted one, so every checkpoint saves
this process's Python, NumPy, torch CPU and CUDA generator states; a checkpoint is only ever read
back with ``safetensors`` and ``json`` (a pickle from a run directory could run code).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: ``(tensors, json_values)``."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
        "python_state": torch.tensor(mt_state, dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    values = {
        "python_version": version,
        "python_gauss": gauss,
        "numpy_kind": kind,
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
    }
    return tensors, values


def restore(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    """Set this process's generators to a state from :func:`capture`."""
    random.setstate(
        (values["python_version"], tuple(tensors["python_state"].tolist()), values["python_gauss"])
    )
    np.random.set_state(
        (
            values["numpy_kind"],
            tensors["numpy_keys"].numpy().astype(np.uint32),
            values["numpy_pos"],
            values["numpy_has_gauss"],
            values["numpy_cached_gaussian"],
        )
    )
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k.split("_")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
