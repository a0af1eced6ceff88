"""qlora_kit's pytest plugin: the test kit's tiny models as session fixtures, and the ``gpu`` marker.

Where qlora_kit is installed, pytest loads it by itself (the ``pytest11`` entry point
``qlora_kit.testing.plugin``); elsewhere, name it: ``pytest -p qlora_kit.testing.plugin`` or, in a
top-level ``conftest.py``, ``pytest_plugins = ["qlora_kit.testing.plugin"]``. The entry point bears the
module's own name, so naming it too is harmless (under another name pytest would register the module
twice and stop with "Plugin already registered under a different name"). ``-p no:qlora_kit.testing.plugin``
turns it off.

Fixtures (all built in code, no network; session-scoped, so built once per test session):

- ``qlora_tokenizer``: :func:`~qlora_kit.testing.make_tokenizer`'s byte-level BPE tokenizer;
- ``tiny_llama_dir``: a 2-layer random Llama saved with that tokenizer (a local model directory);
- ``tiny_gpt2_dir``: a 2-layer GPT-2 (``c_attn``/``c_proj``/``c_fc``, ``Conv1D`` layers) with it;
- ``tiny_gguf_file``: the tiny Llama as a llama.cpp-style ``.gguf`` file;
- ``gpu_device``: ``cuda:0``; a test that asks for it is skipped where CUDA is missing.

Marker: ``@pytest.mark.gpu`` tests are skipped where CUDA is missing.

torch is imported only when a fixture needs it or a ``gpu`` test was collected: pytest loads this plugin
in every session of an environment where qlora_kit is installed, whatever is being tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

GPU_MARKER = "gpu: needs a CUDA device (skipped automatically where there is none)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", GPU_MARKER)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def qlora_tokenizer() -> Any:
    """A byte-level BPE tokenizer made in code (eos = bos = ``<|endoftext|>``, no pad token, like GPT-2)."""
    from qlora_kit.testing.kit import make_tokenizer

    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, qlora_tokenizer: Any) -> Path:
    """A 2-layer random Llama (hidden 64) saved with ``qlora_tokenizer``, as a local model directory."""
    from qlora_kit.testing.kit import make_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(path, qlora_tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, qlora_tokenizer: Any) -> Path:
    """A 2-layer GPT-2 (64 wide, 256 positions) sized to ``qlora_tokenizer`` and saved with it: GPT-2's
    module names (``c_attn``, ``c_proj``, ``c_fc``) and ``Conv1D`` layers, as distilgpt2 has them."""
    from qlora_kit.testing.kit import make_distilgpt2_shape

    path = tmp_path_factory.mktemp("tiny-gpt2")
    make_distilgpt2_shape(
        path,
        qlora_tokenizer,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=256,
        vocab_size=len(qlora_tokenizer),
    )
    return path


@pytest.fixture(scope="session")
def tiny_gguf_file(tmp_path_factory: pytest.TempPathFactory, qlora_tokenizer: Any) -> Path:
    """The tiny Llama and ``qlora_tokenizer`` written as a llama GGUF file (float32 tensors)."""
    from qlora_kit.testing.kit import make_tiny_gguf

    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf"
    make_tiny_gguf(path, qlora_tokenizer)
    return path


@pytest.fixture(scope="session")
def gpu_device() -> Any:
    """``torch.device("cuda", 0)``; the test is skipped where CUDA is missing (marked ``gpu`` or not)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda", 0)
