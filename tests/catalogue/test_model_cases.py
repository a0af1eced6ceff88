"""Catalogue: model files, hub ids, tokenizer, position limit, attention kernel, quantization backend
(`qlora-kit inspect` and `data`, which load what `train` loads, in the same order)."""

from __future__ import annotations

import sys

import pytest

M = "model.name_or_path="


def _offline(monkeypatch, world):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def _unreachable_hub(monkeypatch, world):
    # Every hub URL goes to a local port nothing listens on: a refused connection, as when offline.
    port = world.paths["closed_port"]
    template = f"http://127.0.0.1:{port}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE", template)


def _no_bitsandbytes(monkeypatch, world):
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)


CASES = [
    # id, argv, fragments of the message, set-up
    ("model-dir-missing", ["inspect", "{base}", M + "{root}/nowhere"], ["model.name_or_path", "nowhere"], None),
    ("path-like-name-never-goes-to-hub", ["inspect", "{base}", M + "models/tiny/v2"],
     ["model.name_or_path", "no model directory at 'models/tiny/v2'"], _unreachable_hub),
    ("dir-without-config", ["inspect", "{base}", M + "{no_config}"], ["no-config", "no config.json"], None),
    ("truncated-safetensors", ["inspect", "{base}", M + "{llama_truncated}"],
     ["model.safetensors is corrupt or truncated"], None),
    ("nan-weights-behind-valid-header", ["inspect", "{base}", M + "{llama_nan}"],
     ["llama-nan/model.safetensors", "holds NaN or infinite values", "tensor '"], None),
    ("truncated-gguf", ["inspect", "{base}", M + "{gguf_truncated}"], ["truncated.gguf is not a readable GGUF file"], None),
    ("gguf-missing", ["inspect", "{base}", M + "{root}/absent.gguf"], ["GGUF file not found", "absent.gguf"], None),
    ("hub-id-offline-not-cached", ["inspect", "{base}", M + "models/tiny"],
     ["model.name_or_path", "'models/tiny' is not in the Hugging Face cache", "HF_HUB_OFFLINE=1"], _offline),
    ("hub-unreachable-not-cached", ["data", "{base}", M + "org/not-cached"],
     ["model.name_or_path", "org/not-cached", "cannot be reached", "HF_HUB_OFFLINE=1"], _unreachable_hub),
    ("tokenizer-dir-missing", ["data", "{base}", "model.tokenizer=./no/such/tokenizer"],
     ["model.tokenizer", "no tokenizer directory"], None),
    ("tokenizer-hub-id-offline", ["data", "{base}", "model.tokenizer=org/tok"],
     ["model.tokenizer", "org/tok", "HF_HUB_OFFLINE=1"], _offline),
    ("pad-token-keep-without-pad", ["data", "{base}", "model.pad_token=keep"], ["model.pad_token=keep", "use `add`"], None),
    ("max-length-beyond-positions", ["data", "{base}", M + "{gpt2_64}", "data.max_length=256"],
     ["data.max_length", "256", "64 positions", "n_positions"], None),
    ("flash-attention-on-cpu", ["inspect", "{base}", "model.attn_implementation=flash_attention_2"],
     ["model.attn_implementation=flash_attention_2", "CUDA", "sdpa"], None),
    ("bitsandbytes-missing", ["inspect", "{base}", "quant.kind=bnb_4bit"],
     ["quant.kind=bnb_4bit", "bitsandbytes cannot be imported"], _no_bitsandbytes),
    ("adapter-target-not-in-model", ["inspect", "{base}", "adapter.target_modules=[c_attn]"],
     ["adapter.target_modules", "c_attn"], None),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "expect", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_model_case(expect_error, world, monkeypatch, closed_port, argv, expect, setup):
    world.paths["closed_port"] = str(closed_port)
    if setup is not None:
        setup(monkeypatch, world)
    expect_error(argv, expect)


def test_a_long_max_length_is_fine_for_rope_models(world, run_cli):
    """Models without a learned position table (RoPE: the tiny Llama has 512 positions) are not refused."""
    rc, err = run_cli(world.fmt(["data", "{base}", "data.max_length=2048"]))
    assert rc == 0, err
