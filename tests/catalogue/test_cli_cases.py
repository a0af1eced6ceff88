"""Catalogue: command-line arguments, exported runs (`generate`, `export`) and output directories."""

from __future__ import annotations

import shutil

import pytest

CASES = [
    # id, argv, fragments of the message
    ("unknown-command", ["bogus"], ["qlora-kit", "invalid choice: 'bogus'"]),
    ("missing-config-argument", ["validate"], ["qlora-kit validate", "required: config"]),
    ("unknown-option", ["validate", "{base}", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ("field-without-equals", ["generate", "{adapter_run}", "--prompt", "hi", "--field", "foo"],
     ["--field", "'foo'", "NAME=VALUE"]),
    ("field-without-name", ["generate", "{adapter_run}", "--prompt", "hi", "--field", "=x"], ["--field", "NAME=VALUE"]),
    ("max-new-tokens-not-a-number", ["generate", "{adapter_run}", "--prompt", "hi", "--max-new-tokens", "many"],
     ["--max-new-tokens", "'many' is not a positive whole number"]),
    ("max-new-tokens-negative", ["generate", "{adapter_run}", "--prompt", "hi", "--max-new-tokens", "-3"],
     ["--max-new-tokens", "'-3'"]),
    ("temperature-nan", ["generate", "{adapter_run}", "--prompt", "hi", "--temperature", "nan"],
     ["--temperature", "finite number >= 0"]),
    ("use-unknown-export", ["generate", "{adapter_run}", "--prompt", "hi", "--use", "gguf"],
     ["--use", "invalid choice: 'gguf'"]),
    ("generate-without-prompt", ["generate", "{adapter_run}"], ["--prompt TEXT", "--chat"]),
    ("generate-nothing-exported", ["generate", "{empty}", "--prompt", "hi"], ["empty_dir", "no exported model here"]),
    ("generate-corrupt-adapter", ["generate", "{corrupt_adapter_run}", "--prompt", "hi"],
     ["adapter_model.safetensors", "truncated or replaced", "qlora-kit export"]),
    ("generate-bad-device", ["generate", "{adapter_run}", "--prompt", "hi", "--device", "gpu0"],
     ["device 'gpu0'", "cpu, cuda"]),
    ("chat-with-a-non-chat-run", ["generate", "{adapter_run}", "--chat"], ["--chat needs a run trained with a chat formatter"]),
    ("export-not-a-run", ["export", "{empty}"], ["empty_dir", "no run_config.yaml"]),
    ("override-after-an-option", ["export", "{adapter_run}", "--kind", "merged", "export.dtype=float16"],
     ["unrecognized arguments: export.dtype=float16", "before any --option"]),
    ("export-kind-choice", ["export", "{adapter_run}", "--kind", "onnx"], ["--kind", "invalid choice: 'onnx'"]),
    ("export-kind-none", ["export", "{adapter_run}", "export.kind=none"], ["export.kind is `none`"]),
    ("export-bad-override", ["export", "{adapter_run}", "export.kind=merged", "export.dtype=float8"], ["export.dtype"]),
    ("quickstart-zero-steps", ["quickstart", "--steps", "0"], ["--steps", "'0' is not a positive whole number"]),
    ("export-corrupt-adapter", ["export", "{corrupt_adapter_run}", "export.kind=adapter"],
     ["adapter_model.safetensors", "truncated or replaced", "Export it again"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def exported(world, tokenizer):
    """A run dir holding an adapter export of the tiny Llama (no training), and a copy whose adapter
    weights are truncated."""
    from qlora_kit.config.io import load_config
    from qlora_kit.export.adapter import save_adapter
    from qlora_kit.model.adapters import AdapterBuilder
    from qlora_kit.model.loading import ModelLoader

    cfg = load_config(world.paths["base"])
    model, tok = ModelLoader(cfg.model, cfg.quant, "cpu").load()
    model = AdapterBuilder(cfg.adapter).apply(model)
    run = world.root / "exported-run"
    save_adapter(model, tok, run / "adapter", cfg)
    shutil.copy(world.paths["base"], run / "run_config.yaml")
    corrupt = world.root / "corrupt-run"
    shutil.copytree(run, corrupt)
    weights = corrupt / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    world.add("adapter_run", run)
    world.add("corrupt_adapter_run", corrupt)
    return world


@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_case(exported, expect_error, argv, expect):
    expect_error(argv, expect)
