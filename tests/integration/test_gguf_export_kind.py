"""`export.kind: gguf`: the verified merged model and a GGUF file of it, verified by reloading, through
`qlora-kit train` and `qlora-kit export`; a failed GGUF verification exits 3; other architectures are
refused before anything is merged."""

from __future__ import annotations

import json

import gguf
import pytest
import yaml

from qlora_kit.cli import main as cli
from qlora_kit.errors import ExportError
from qlora_kit.export import build_exporter
from qlora_kit.rundir.manifest import verify_manifest
from qlora_kit.testing import make_alpaca_rows, make_distilgpt2_shape


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("gguf")
    (root / "rows.json").write_text(json.dumps(make_alpaca_rows(24)))
    config = {
        "output_dir": str(root / "run"),
        "model": {"name_or_path": str(tiny_llama_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"source": {"path": str(root / "rows.json")}, "eval": {"fraction": 0.25}, "max_length": 256},
        "train": {"max_steps": 2, "micro_batch_size": 4, "optimizer": {"lr": 1e-3}, "eval_at_start": False},
        "export": {"kind": "adapter"},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return root / "run.yaml"


def _report(run):
    return json.loads((run / "merged" / "merge_report.json").read_text())


def test_train_with_a_gguf_export(config_file, capsys):
    run = config_file.parent / "run"
    assert cli(["train", str(config_file), "export.kind=gguf", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    path = run / "gguf" / "model-bf16.gguf"  # auto: the merged model's dtype (bfloat16 by default)
    assert (
        f"gguf: {path}" in printed and "merge verified" in printed and "GGUF verified (GGUF BF16" in printed
    )
    report = _report(run)
    assert report["passed"] and report["gguf"]["passed"] and report["gguf"]["file"] == path.name
    assert (
        report["gguf"]["prompt_source"] == "held-out rows"
        and report["gguf"]["tokenizer"]["encodes_identically"]
    )
    assert report["gguf"]["logits"]["mean_kl"] < 1e-5  # bf16 weights reload bit-identical
    assert sorted(p.name for p in (run / "gguf").iterdir()) == [
        "README.md", "manifest.json", "model-bf16.gguf", "qlora_kit.json",
    ]  # fmt: skip
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == "llama"
    assert json.loads((run / "gguf" / "qlora_kit.json").read_text())["kind"] == "gguf"
    assert report["gguf"]["message"] in (run / "gguf" / "README.md").read_text()
    for directory in (
        run / "gguf",
        run / "merged",
        run / "adapter",
        run,
    ):  # merge_report.json rewritten: still intact
        assert verify_manifest(directory) == [], directory
    assert cli(["verify", str(run), "--no-load"]) == 0
    assert f"{run / 'gguf' / 'manifest.json'}: every file present" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["merge_passed"] is True and summary["merged_dir"] == str(run / "merged")


def test_export_a_finished_run_as_gguf_and_a_failed_verification_exits_3(config_file, capsys):
    run = config_file.parent / "run"
    assert cli(["train", str(config_file), "--overwrite"]) == 0  # an adapter-only run
    assert not (run / "gguf").exists()
    capsys.readouterr()
    assert cli(["export", str(run), "export.gguf_dtype=q8_0", "--kind", "gguf"]) == 0
    assert "GGUF verified (GGUF Q8_0 model-q8_0.gguf)" in capsys.readouterr().out
    assert [p.name for p in (run / "gguf").glob("*.gguf")] == ["model-q8_0.gguf"]
    kl = _report(run)["gguf"]["logits"]["mean_kl"]
    assert 0 < kl < 1e-3

    # the same file, a tolerance below its error: saved, reported, and exit code 3 like a failed merge
    assert (
        cli(["export", str(run), "export.gguf_dtype=q8_0", "export.gguf_max_mean_kl=1e-12", "--kind", "gguf"])
        == 3
    )
    err = capsys.readouterr().err
    assert "GGUF VERIFICATION FAILED (GGUF Q8_0 model-q8_0.gguf): mean KL" in err
    report = _report(run)
    assert report["passed"] and not report["gguf"]["passed"] and (run / "gguf" / "model-q8_0.gguf").is_file()

    assert (
        cli(["export", str(run), "export.dtype=float16", "--kind", "gguf"]) == 0
    )  # auto -> f16; replaces gguf/
    assert [p.name for p in (run / "gguf").glob("*.gguf")] == ["model-f16.gguf"]
    assert cli(["export", str(run), "export.gguf_dtype=q4_0", "--kind", "gguf"]) == 2
    assert "export.gguf_dtype" in capsys.readouterr().err


def test_other_architectures_are_refused_before_the_merge(tmp_path, tokenizer):
    gpt2 = make_distilgpt2_shape(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    with pytest.raises(ExportError, match=r"supports llama-architecture models .*'gpt2'"):
        build_exporter({"kind": "gguf"}).export(gpt2, tokenizer, tmp_path, run_cfg=None)
    assert list(tmp_path.iterdir()) == []  # nothing merged or written
