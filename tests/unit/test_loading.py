"""ModelLoader: sources (local dir, GGUF), dtypes, the 4-bit CPU path, pad policy, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from qlora_kit.cli import main
from qlora_kit.config import ModelConfig
from qlora_kit.errors import ModelLoadError, QloraKitError
from qlora_kit.model import ModelLoader, prepare_for_training, resolve_device
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.gguf import dequantize_gguf
from qlora_kit.model.quant import Bnb4bit, NoQuant
from qlora_kit.testing import make_distilgpt2_shape, make_tiny_gguf


def _loader(path, quant=None, **model):
    return ModelLoader(ModelConfig(name_or_path=str(path), **model), quant or Bnb4bit.Config(), "cpu")


def test_4bit_load_keeps_head_unquantized_and_the_rest_in_compute_dtype(tiny_llama_dir):
    model = _loader(tiny_llama_dir, Bnb4bit.Config(compute_dtype="bfloat16")).load_model()
    linear4 = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(linear4) == 14  # 7 projections x 2 layers
    assert not isinstance(model.lm_head, Linear4bit)
    others = {p.dtype for n, p in model.named_parameters() if type(p).__name__ != "Params4bit"}
    assert others == {torch.bfloat16}
    assert all(m.compute_dtype == torch.bfloat16 for m in linear4)
    assert not any(m.support_avx512bf16_for_cpu for m in linear4)  # the repacking guard is on


def test_skip_modules_keep_the_output_head_unquantized_too(tiny_llama_dir):
    model = _loader(tiny_llama_dir, Bnb4bit.Config(skip_modules=["down_proj"])).load_model()
    assert not isinstance(model.model.layers[0].mlp.down_proj, Linear4bit)
    assert isinstance(model.model.layers[0].mlp.up_proj, Linear4bit)
    assert not isinstance(model.lm_head, Linear4bit)


def test_no_quant_loads_in_compute_dtype(tiny_llama_dir):
    model = _loader(tiny_llama_dir, NoQuant.Config(compute_dtype="float32")).load_model()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(isinstance(m, Linear4bit) for m in model.modules())


def test_real_4bit_lora_step_trains_only_the_adapter(tiny_llama_dir):
    model, tokenizer = _loader(tiny_llama_dir, Bnb4bit.Config(compute_dtype="float32")).load()
    prepare_for_training(model, grad_checkpointing=True)
    assert {p.dtype for p in model.parameters() if type(p).__name__ != "Params4bit"} == {torch.float32}
    model = AdapterBuilder(AdapterBuilder.Config(r=4, target_modules="all-linear")).apply(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    states = {
        n: m.weight.quant_state.absmax.clone() for n, m in model.named_modules() if isinstance(m, Linear4bit)
    }
    ids = torch.tensor([tokenizer("Say what the cat paints. The cat paints a map.")["input_ids"]] * 2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0
    optimizer.step()
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, before[name]), f"base parameter {name} changed"
        elif "lora_B" in name:
            assert not torch.equal(param, before[name]), f"adapter {name} did not move"
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            assert torch.equal(module.weight.quant_state.absmax, states[name])


def test_prepare_for_training_freezes_without_upcasting(tiny_llama_dir):
    model = _loader(tiny_llama_dir, Bnb4bit.Config(compute_dtype="bfloat16")).load_model()
    model.model.embed_tokens.weight.requires_grad_(True)
    prepare_for_training(model, grad_checkpointing=True)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # peft's helper would make it fp32
    assert model.config.use_cache is False
    assert model.model.gradient_checkpointing
    assert model.model.layers[0]._gradient_checkpointing_func.keywords["use_reentrant"] is False


def test_pad_policy_add_resizes_and_keeps_tied_embeddings_tied(tmp_path, tokenizer):
    make_distilgpt2_shape(tmp_path, tokenizer, n_layer=1, n_embd=64, n_head=2, vocab_size=len(tokenizer))
    model, tok = _loader(tmp_path, pad_token="add").load()
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 1
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.config.pad_token_id == tok.pad_token_id
    assert isinstance(model.transformer.h[0].attn.c_attn, Linear4bit)
    embeddings = model.get_input_embeddings().weight
    assert torch.equal(embeddings[-1], embeddings[:-1].float().mean(0).to(embeddings.dtype))
    again, _ = _loader(tmp_path, pad_token="add").load()
    assert torch.equal(again.get_input_embeddings().weight, embeddings)  # every load resizes alike


def test_pad_policy_add_on_an_untied_head(tiny_llama_dir, tokenizer):
    model, tok = _loader(tiny_llama_dir, pad_token="add").load()
    head = model.get_output_embeddings().weight
    assert head.shape[0] == len(tokenizer) + 1 and head is not model.get_input_embeddings().weight
    assert torch.equal(head[-1], head[:-1].float().mean(0).to(head.dtype))


def test_pad_policy_eos_reuses_eos_without_resizing(tiny_llama_dir, tokenizer):
    model, tok = _loader(tiny_llama_dir, pad_token="eos").load()
    assert tok.pad_token == tok.eos_token
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


@pytest.mark.parametrize("policy", ["keep", "unk"])
def test_pad_policy_without_a_usable_token_is_an_error(tiny_llama_dir, policy):
    with pytest.raises(ModelLoadError, match=f"model.pad_token={policy}"):
        _loader(tiny_llama_dir, pad_token=policy).load_tokenizer()


def test_gguf_is_dequantized_once_into_a_cache(tmp_path, tokenizer, monkeypatch):
    original = make_tiny_gguf(tmp_path / "tiny.gguf", tokenizer)
    loader = _loader(
        tmp_path / "tiny.gguf",
        NoQuant.Config(compute_dtype="float32"),
        cache_dir=str(tmp_path / "cache"),
        pad_token="eos",
    )
    model, tok = loader.load()
    ids = torch.tensor([tokenizer("Say what the moon builds.")["input_ids"]])
    assert tok("Say what the moon builds.")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)
    entries = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".partial")

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr("qlora_kit.model.gguf._convert", no_second_conversion)
    assert dequantize_gguf(tmp_path / "tiny.gguf", tmp_path / "cache") == entries[0]
    quantized = _loader(tmp_path / "tiny.gguf", cache_dir=str(tmp_path / "cache")).load_model()
    assert any(isinstance(m, Linear4bit) for m in quantized.modules())


def test_a_converted_gguf_file_is_not_read_again_and_its_origin_comes_from_the_cache(
    tmp_path, tokenizer, monkeypatch
):
    """Reading a GGUF header parses the whole vocabulary (seconds for a real model): after the conversion
    neither loading nor the export's provenance reads the file again; an entry converted before the origin
    was stored gets it on the first read."""
    import gguf

    from qlora_kit.config.io import load_config
    from qlora_kit.model.gguf import ORIGIN_FILE, gguf_origin_metadata
    from qlora_kit.model.source import describe_source

    path = tmp_path / "tiny.gguf"
    make_tiny_gguf(path, tokenizer)
    entry = dequantize_gguf(path, tmp_path / "cache")
    origin = json.loads((entry / ORIGIN_FILE).read_text())
    assert origin == gguf_origin_metadata(path, tmp_path / "no-cache")  # what the file's header says
    (entry / ORIGIN_FILE).unlink()  # as an entry of an older version: read once, then stored
    assert gguf_origin_metadata(path, tmp_path / "cache") == origin and (entry / ORIGIN_FILE).is_file()
    (entry / ORIGIN_FILE).write_text(json.dumps({"name": "from the cache", "file_type": "Q8_0"}))

    def no_reading(*args, **kwargs):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(gguf, "GGUFReader", no_reading)
    assert dequantize_gguf(path, tmp_path / "cache") == entry
    model_cfg = load_config(
        {"model": {"name_or_path": str(path), "cache_dir": str(tmp_path / "cache")}}
    ).model
    described = describe_source(model_cfg)
    assert described["file_type"] == "Q8_0" and described["metadata"] == {"name": "from the cache"}
    assert described["size"] == path.stat().st_size


def test_interrupted_gguf_conversion_leaves_no_cache_entry(tmp_path, tokenizer, monkeypatch):
    make_tiny_gguf(tmp_path / "tiny.gguf", tokenizer)

    def interrupted(path, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr("qlora_kit.model.gguf._convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dequantize_gguf(tmp_path / "tiny.gguf", tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


# ------------------------------------------------------------------------------------ bad input


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="model.name_or_path.*nowhere"):
        _loader(tmp_path / "nowhere").load_model()


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        _loader(tmp_path).load_model()


def test_truncated_safetensors_is_named(tmp_path, tiny_llama_dir):
    import shutil

    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="model.safetensors is corrupt or truncated"):
        _loader(tmp_path / "m").load_model()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_gguf_is_named(tmp_path, tokenizer, damage):
    path = tmp_path / "bad.gguf"
    make_tiny_gguf(path, tokenizer)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a gguf file" * 100)
    with pytest.raises(ModelLoadError, match="bad.gguf is not a readable GGUF file"):
        _loader(path, cache_dir=str(tmp_path / "cache")).load_model()


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        _loader(tmp_path / "absent.gguf").load_model()


def test_bitsandbytes_not_importable(tiny_llama_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(ModelLoadError, match="quant.kind=bnb_4bit: bitsandbytes cannot be imported"):
        _loader(tiny_llama_dir).load_model()


def test_bitsandbytes_without_a_backend_for_the_device(tiny_llama_dir, monkeypatch):
    def no_backend(module, device):
        raise NotImplementedError(f"no kernel for {device.type}")

    monkeypatch.setattr("qlora_kit.model.quant._probe_bitsandbytes", no_backend)
    with pytest.raises(
        ModelLoadError, match="quant.kind=bnb_4bit: bitsandbytes has no working backend for cpu"
    ):
        _loader(tiny_llama_dir).load_model()
    _loader(tiny_llama_dir, NoQuant.Config()).load_model()  # no bitsandbytes needed without quantization


def test_bf16_on_a_gpu_without_bf16(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    model_cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    loader = ModelLoader(model_cfg, Bnb4bit.Config(compute_dtype="bfloat16"), "cuda")
    with pytest.raises(
        ModelLoadError, match="quant.compute_dtype: bfloat16 is not supported on cuda:0 \\(Tesla T4\\)"
    ):
        loader.load_model()
    assert ModelLoader(model_cfg, Bnb4bit.Config(), "cuda").quant_cfg.compute_dtype == "float16"  # `auto`


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda(tiny_llama_dir):
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), "cuda:0").load_model()


def test_cli_reports_a_bad_model_without_traceback(tmp_path, capsys):
    import yaml

    weights = tmp_path / "m"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"\x00" * 10)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"name_or_path": str(weights)}}))
    assert main(["inspect", str(config)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is corrupt or truncated" in err and "Traceback" not in err


def test_errors_are_qlora_kit_errors_and_device_default():
    assert issubclass(ModelLoadError, QloraKitError)
    assert resolve_device(None) == (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )
    assert resolve_device("cuda") == torch.device("cuda", 0)
