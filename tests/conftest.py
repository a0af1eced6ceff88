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


@pytest.fixture
def tiny_run_config(tiny_llama_dir, tmp_path):
    """Writes a `qlora-kit train` YAML for the tiny Llama (4-bit, fp32 compute) on 8 Alpaca rows, with the
    given `train` settings; returns its path. The run goes to ``tmp_path / "run"``."""
    import json

    import yaml

    from qlora_kit.testing import make_alpaca_rows

    def write(**train):
        rows = tmp_path / "rows.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_rows(8, seed=2)))
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({
            "output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_llama_dir)},
            "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"}, "adapter": {"r": 4, "alpha": 8},
            "data": {"source": {"path": str(rows)}}, "train": train, "export": {"kind": "adapter"},
        }))  # fmt: skip
        return cfg

    return write


@pytest.fixture
def deferring(monkeypatch):
    """Each step's loss and norm read one step late (``training.step_stats``) on the CPU too, as on a GPU;
    returns, per ``Trainer.fit``, whether it did."""
    from qlora_kit.training import step_stats

    monkeypatch.setattr(step_stats, "DEFERRING_DEVICES", {"cuda", "cpu"})
    seen = []
    original = step_stats.defers

    def spy(*args):
        seen.append(original(*args))
        return seen[-1]

    monkeypatch.setattr("qlora_kit.training.loop.defers", spy)
    return seen
