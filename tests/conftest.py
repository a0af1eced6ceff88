"""Shared fixtures: a tokenizer and tiny models built in code, and the `gpu` marker's auto-skip."""

from __future__ import annotations

import pytest
import torch

from qlora_kit.testing import make_tiny_llama, make_tokenizer


def pytest_configure(config):
    # Tiny models run fastest on one thread, and two torch threads on a busy 2-core machine wait on each
    # other (a 0.7 s fit took 20 s with another process running). Subprocesses keep their own default.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer made in code (no pad token, eos = bos, like GPT-2)."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer):
    """A 2-layer random Llama saved with its tokenizer, as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(path, tokenizer)
    return path


@pytest.fixture
def gpu_device():
    """`cuda:0` for `gpu`-marked tests (they are skipped where CUDA is missing)."""
    return torch.device("cuda", 0)
