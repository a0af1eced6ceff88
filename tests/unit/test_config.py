import json

import pytest

from qlora_kit.cli import main
from qlora_kit.config.io import load_config
from qlora_kit.errors import ConfigError


def _errors(data, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(data, overrides)
    return dict(info.value.errors)


def test_defaults_and_dotted_overrides():
    cfg = load_config(
        {}, ["train.optimizer.lr=1e-4", "adapter.target_modules=[c_attn, c_fc]", "quant.kind=none"]
    )
    assert cfg.train.optimizer.kind == "adamw_torch" and cfg.train.optimizer.lr == 1e-4
    assert cfg.adapter.target_modules == ["c_attn", "c_fc"]
    assert cfg.quant.kind == "none"


def test_unknown_key_suggests_closest():
    errors = _errors({"quant": {"kind": "bnb_4bit", "quant_typ": "nf4"}})
    assert "did you mean 'quant_type'" in errors["quant"]


def test_unknown_kind_lists_known():
    errors = _errors({"quant": {"kind": "bnb_3bit"}})
    assert all(k in errors["quant"] for k in ("bnb_4bit", "bnb_8bit", "none"))


def test_every_error_has_its_path():
    errors = _errors({"adapter": {"r": 0}, "train": {"optimizer": {"kind": "adamw_8bit", "lr": -1}}})
    assert set(errors) == {"adapter.r", "train.optimizer.lr"}


def test_unknown_formatter_lists_registered():
    errors = _errors({"data": {"formatter": {"kind": "alpacca"}}})
    assert "alpaca_reference" in errors["data.formatter"]


def test_yaml_file_and_cli(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\nquant: {kind: bnb_4bit, quant_type: fp4}\n")
    assert load_config(path).quant.quant_type == "fp4"
    assert main(["validate", str(path), "train.micro_batch_size=2"]) == 0
    assert "micro_batch_size: 2" in capsys.readouterr().out
    path.write_text("train:\n  epohcs: 3\n")
    assert main(["validate", str(path)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_bad_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)


def test_schema_is_json(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "Quantize the per-block absmax" in json.dumps(schema)


def test_plugin_import_failure_raises():
    errors = _errors({"plugins": ["no_such_module_xyz"]})
    assert "no_such_module_xyz" in errors["plugins"]


def test_debug_flag_after_the_subcommand_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epohcs: 3}\n")
    for argv in (["--debug", "validate", str(path)], ["validate", str(path), "--debug"]):
        with pytest.raises(ConfigError):
            main(argv)
    assert main(["validate", str(path)]) == 2
