"""The project's own test settings. The fixtures (tiny models, tokenizer, GGUF file, `gpu_device`) and
the `gpu` marker's auto-skip come from qlora_kit's pytest plugin, the one users get
(:mod:`qlora_kit.testing.plugin`); only what is particular to this test suite is here."""

from __future__ import annotations

import pytest
import torch

# Where qlora_kit is installed with its entry point pytest has loaded the plugin already (under this same
# name, so this line is then a no-op); in a checkout that is only on PYTHONPATH, this loads it.
pytest_plugins = ["qlora_kit.testing.plugin"]


def pytest_configure(config):
    # Tiny models run fastest on one thread, and two torch threads on a busy 2-core machine wait on each
    # other (a 0.7 s fit took 20 s with another process running). Subprocesses keep their own default.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer(qlora_tokenizer):
    """The plugin's ``qlora_tokenizer`` under the name this suite's tests use."""
    return qlora_tokenizer
