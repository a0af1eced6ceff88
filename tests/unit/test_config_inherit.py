"""Config files built on others (`base:`): chains, the kind rule, cycles, and overrides on top."""

from __future__ import annotations

import pytest
import yaml

from qlora_kit.cli import main
from qlora_kit.config.io import config_to_yaml, load_config
from qlora_kit.errors import ConfigError


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def chain(tmp_path):
    """experiments/small.yaml -> ../recipes/seed.yaml -> common/defaults.yaml (each relative to its file)."""
    _write(tmp_path / "recipes" / "common" / "defaults.yaml", {
        "output_dir": "runs/defaults", "train": {"seed": 7, "log_every": 5},
        "quant": {"compute_dtype": "float32"},
    })  # fmt: skip
    _write(tmp_path / "recipes" / "seed.yaml", {
        "base": "common/defaults.yaml",
        "train": {"epochs": 3, "optimizer": {"kind": "adamw_torch", "lr": 2e-4, "weight_decay": 0.01},
                  "scheduler": {"kind": "cosine", "warmup_ratio": 0.1}},
        "adapter": {"r": 8, "target_modules": ["c_attn", "c_proj"]},
        "export": {"kind": "merged", "dtype": "float16", "max_shard_size": "1GB"},
    })  # fmt: skip
    return _write(tmp_path / "experiments" / "small.yaml", {
        "base": "../recipes/seed.yaml",
        "output_dir": "runs/small",
        "train": {"epochs": 1, "optimizer": {"lr": 1e-4}},
        "adapter": {"target_modules": ["c_fc"]},
    })  # fmt: skip


def test_a_chain_merges_each_file_over_its_base(chain):
    cfg = load_config(chain)
    assert cfg.output_dir == "runs/small"
    assert (cfg.train.seed, cfg.train.log_every, cfg.quant.compute_dtype) == (7, 5, "float32")  # 2 levels up
    assert (cfg.train.epochs, cfg.train.optimizer.lr, cfg.train.optimizer.weight_decay) == (1, 1e-4, 0.01)
    assert cfg.adapter.target_modules == ["c_fc"] and cfg.adapter.r == 8  # a list replaces, not appends
    assert (cfg.export.kind, cfg.export.dtype, cfg.export.max_shard_size) == ("merged", "float16", "1GB")


def test_overrides_apply_on_top_and_the_resolved_config_has_no_base(chain, capsys):
    cfg = load_config(chain, ["train.epochs=2", "export.kind=adapter"])
    assert cfg.train.epochs == 2 and cfg.export.kind == "adapter" and cfg.train.optimizer.lr == 1e-4
    assert "base" not in yaml.safe_load(config_to_yaml(cfg))
    assert main(["validate", str(chain), "train.epochs=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in printed and printed["train"]["epochs"] == 2 and printed["train"]["seed"] == 7


def test_a_component_of_another_kind_replaces_the_base_section(tmp_path, chain):
    top = _write(tmp_path / "adapter_only.yaml", {
        "base": "experiments/small.yaml",
        "export": {"kind": "adapter"},  # merged's dtype/max_shard_size would be unknown keys of `adapter`
        "quant": {"kind": "none"},  # the base's quant names no kind: it is the default bnb_4bit
        "train": {"scheduler": "cosine", "optimizer": {"kind": "adamw_8bit"}},
    })  # fmt: skip
    cfg = load_config(top)
    assert cfg.export.kind == "adapter" and cfg.quant.kind == "none"
    assert (
        cfg.train.scheduler.kind == "cosine" and cfg.train.scheduler.warmup_ratio == 0.1
    )  # same kind: merged
    assert cfg.train.optimizer.kind == "adamw_8bit"
    assert cfg.train.optimizer.lr == type(cfg.train.optimizer).model_fields["lr"].default  # not the base's


def test_same_kind_merges_options(tmp_path, chain):
    top = _write(
        tmp_path / "t.yaml",
        {"base": "experiments/small.yaml", "export": {"kind": "merged", "dtype": "bfloat16"}},
    )
    cfg = load_config(top)
    assert (cfg.export.dtype, cfg.export.max_shard_size) == ("bfloat16", "1GB")


def test_a_cycle_is_refused_naming_every_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "sub" / "b.yaml"
    _write(a, {"base": "sub/b.yaml"})
    _write(b, {"base": "../a.yaml"})
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(a)
    message = str(info.value)
    assert f"{a.resolve()} -> {b.resolve()} -> {a.resolve()}" in message
    _write(a, {"base": "a.yaml"})  # itself
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_a_missing_or_malformed_base_names_the_file(tmp_path, capsys):
    top = _write(tmp_path / "top.yaml", {"base": "nowhere.yaml"})
    assert main(["validate", str(top)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere.yaml'}: file not found" in err and "top.yaml" in err
    _write(top, {"base": ["a.yaml"]})
    with pytest.raises(ConfigError, match="must be the path of another config file"):
        load_config(top)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    _write(top, {"base": "bad.yaml"})
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(top)
