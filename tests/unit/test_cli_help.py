"""Help for a new user: --version, what a bare command is missing, a hint for a key one section down."""

from __future__ import annotations

import pytest

from qlora_kit import __version__
from qlora_kit.cli import main
from qlora_kit.config.io import load_config
from qlora_kit.errors import ConfigError


def _error(overrides):
    with pytest.raises(ConfigError) as info:
        load_config({}, overrides)
    return dict(info.value.errors)


def test_version_names_the_library_and_its_dependencies(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"qlora-kit {__version__} (python ")
    assert "torch " in out and "transformers " in out and "bitsandbytes " in out


def test_train_without_arguments_asks_for_the_config_only(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "required: config " in err
    assert "overrides" not in err


def test_a_key_of_a_sub_section_is_suggested_with_its_section():
    assert "did you mean 'optimizer.lr'?" in _error(["train.lr=1e-4"])["train"]
    assert "did you mean 'scheduler.warmup_ratio'?" in _error(["train.warmup_ratio=0.1"])["train"]
    assert "did you mean 'quant.quant_type'?" in _error(["quant_type=nf4"])[""]
    # every sub-section that has the key is named
    assert "'subset.seed' or 'eval.seed'" in _error(["data.seed=1"])["data"]


def test_a_misspelling_at_its_own_level_is_still_suggested():
    assert "did you mean 'optimizer'?" in _error(["train.optimzer.lr=1e-4"])["train"]
    assert "did you mean 'epochs'?" in _error(["train.epohcs=3"])["train"]
