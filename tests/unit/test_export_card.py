"""Export provenance and model cards: the original base source (hub id + commit, directory, GGUF file +
sha256) instead of qlora_kit's cache, the quantization saved with the adapter, cards that degrade when a
run left no reports, and load code that runs."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from qlora_kit.config.io import load_config
from qlora_kit.export.card import write_model_card
from qlora_kit.export.card_data import run_summaries
from qlora_kit.export.gguf_writer import write_gguf
from qlora_kit.export.verify import logits_of
from qlora_kit.model.quant import keep_4bit_weights_trainable
from qlora_kit.model.source import describe_source
from qlora_kit.testing import make_tiny_gguf, make_tiny_llama, perturb_lora


def _cfg(name_or_path, out, **model):
    return load_config({
        "output_dir": str(out),
        "model": {"name_or_path": str(name_or_path), **model},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": {"rows": [{"instruction": "x", "output": "y"}]}, "formatter": {"kind": "alpaca"}},
    })  # fmt: skip


def _code(readme: str) -> str:
    return re.search(r"```python\n(.*?)```", readme, re.S)[1]


def test_gguf_sourced_adapter_names_the_gguf_file_and_its_code_loads_the_trained_model(
    tmp_path, tokenizer, monkeypatch
):
    from qlora_kit.export.adapter import save_adapter
    from qlora_kit.model import ModelLoader, prepare_for_training
    from qlora_kit.model.adapters import AdapterBuilder

    gguf_file = tmp_path / "tiny.gguf"
    make_tiny_gguf(gguf_file, tokenizer)
    cfg = _cfg(gguf_file, tmp_path / "run", cache_dir=str(tmp_path / "cache"))
    model, tok = ModelLoader(cfg.model, cfg.quant, device="cpu").load()
    model = perturb_lora(AdapterBuilder(cfg.adapter).apply(prepare_for_training(model, False)))
    adapter = save_adapter(model, tok, tmp_path / "run" / "adapter", cfg)

    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(gguf_file.resolve())  # not the cache dir
    base = json.loads((adapter / "qlora_kit.json").read_text())["base_model"]
    assert base["kind"] == "gguf" and base["path"] == str(gguf_file.resolve())
    assert base["sha256"] == hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert base["size"] == gguf_file.stat().st_size
    readme = (adapter / "README.md").read_text()
    assert base["sha256"] in readme and str(tmp_path / "cache" / "gguf") not in readme  # no cache entry
    assert "| gguf | " in readme  # its version, since the base came from a GGUF file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))  # the snippet's own GGUF conversion
    namespace: dict = {}
    exec(_code(readme), namespace)
    keep_4bit_weights_trainable(namespace["model"])  # the CPU kernel training used
    inputs = [tok("Say what the cat paints.")["input_ids"]]
    reloaded, trained = logits_of(namespace["model"], inputs)[0], logits_of(model, inputs)[0]
    assert (reloaded - trained).abs().max().item() < 1e-5  # measured 0.0


def test_card_of_an_old_run_without_reports_says_what_is_missing(tmp_path, tiny_llama_dir):
    cfg = _cfg(tiny_llama_dir, tmp_path / "run")
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)  # an export of a run made before cards: no qlora_kit.json, no reports
    readme = write_model_card(adapter, "adapter", cfg).read_text()
    assert "Row and token counts: not recorded" in readme
    assert "Final losses: not recorded" in readme
    assert f"local directory `{tiny_llama_dir.resolve()}`" in readme
    assert "BitsAndBytesConfig(\n    load_in_4bit=True," in readme
    assert "| transformers | " in readme and "## Run configuration" in readme


def test_run_summaries_read_metrics_or_summary(tmp_path):
    assert run_summaries(tmp_path) == (None, None)
    (tmp_path / "summary.json").write_text(
        json.dumps({"train_loss": 2.0, "eval_loss": None, "steps": 5, "train_seconds": 3.5})
    )
    _, train = run_summaries(tmp_path)
    assert (train["train_loss"], train["steps"], train["train_time_s"]) == (2.0, 5, 3.5)
    records = [
        {"step": 1, "epoch": 0.5, "loss": 3.0, "tokens": 10, "supervised_tokens": 4},
        {"step": 2, "epoch": 1.0, "loss": 2.5, "tokens": 20, "supervised_tokens": 8},
        {"step": 2, "eval_loss": 2.7, "eval_perplexity": 14.9},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "data_report.json").write_text(json.dumps({"rows_loaded": 7}))
    data, train = run_summaries(tmp_path)
    assert data == {"rows_loaded": 7}
    assert {k: train[k] for k in ("train_loss", "eval_loss", "eval_perplexity", "steps", "epochs", "tokens")} == {
        "train_loss": 2.5, "eval_loss": 2.7, "eval_perplexity": 14.9, "steps": 2, "epochs": 1.0, "tokens": 20,
    }  # fmt: skip


def test_hub_sources_record_the_cached_commit(tmp_path, tiny_llama_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text(commit)
    hub = describe_source(_cfg("org/tiny", tmp_path, cache_dir=str(tmp_path / "hub")).model)
    assert {k: hub[k] for k in ("kind", "repo_id", "revision", "commit")} == {
        "kind": "hub", "repo_id": "org/tiny", "revision": None, "commit": commit,
    }  # fmt: skip
    assert (
        describe_source(_cfg("org/other", tmp_path, cache_dir=str(tmp_path / "hub")).model)["commit"] is None
    )
    make_tiny_llama(snapshot)  # a local path that is a hub snapshot names its repo and commit
    local = describe_source(_cfg(snapshot, tmp_path).model)
    assert (local["kind"], local["repo_id"], local["commit"]) == ("local_dir", "org/tiny", commit)


def test_gguf_card_reports_verification_and_its_code_loads_the_file(tmp_path, tokenizer, tiny_llama_dir):
    from qlora_kit.export.gguf_verify import verify_gguf

    model = make_tiny_llama(tokenizer=tokenizer)
    folder = tmp_path / "run" / "gguf"
    path = write_gguf(model, tokenizer, folder / "model-q8_0.gguf", dtype="q8_0")
    report = verify_gguf(path, model, tokenizer)
    readme = write_model_card(folder, "gguf", _cfg(tiny_llama_dir, tmp_path / "run"), gguf_report=report,
                              path=path).read_text()  # fmt: skip
    assert readme.startswith("---\nlibrary_name: gguf\n") and report["message"] in readme
    assert f"llama-cli -m {path}" in readme
    namespace: dict = {}
    exec(_code(readme), namespace)
    assert namespace["model"].config.num_hidden_layers == 2
    assert namespace["tokenizer"].eos_token == tokenizer.eos_token


def test_load_snippet_rejects_an_unknown_kind():
    from qlora_kit.errors import QloraKitError
    from qlora_kit.export.load_code import load_snippet

    with pytest.raises(QloraKitError, match="unknown kind 'onnx'; known: adapter, merged, gguf"):
        load_snippet("onnx", ".")
