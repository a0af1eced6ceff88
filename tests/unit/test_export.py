"""Export: atomic directories, EOS ids, logit comparison, adapter round-trip in a fresh process,
merge verification into both bases, sharding, and nothing half-written when a merge fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from qlora_kit.config.io import load_config
from qlora_kit.errors import StorageError
from qlora_kit.export import MergeVerificationWarning, build_exporter
from qlora_kit.export.verify import compare_logits, logits_of
from qlora_kit.files import atomic_dir
from qlora_kit.formatting import build_formatter
from qlora_kit.testing import make_tokenizer, perturb_lora


def test_atomic_dir_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no .partial / .old leftovers


def test_stop_ids_add_im_end_only_for_chat_formats_with_that_token(tokenizer):
    def stops(kind, tok):
        return build_formatter(kind).stop_token_ids(tok)

    assert stops("alpaca", tokenizer) == [tokenizer.eos_token_id]
    assert stops("chatml", tokenizer) == [tokenizer.eos_token_id]  # <|im_end|> is not one token here
    chat_tok = make_tokenizer()  # a copy: the session fixture stays untouched
    chat_tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    end = chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert stops("chatml", chat_tok) == [chat_tok.eos_token_id, end]


def test_compare_logits_measures_difference_kl_and_agreement():
    ref = [torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])]
    assert compare_logits(ref, ref) == {
        "max_abs_logit_diff": 0.0, "mean_kl": 0.0, "max_kl": 0.0, "top1_agreement": 1.0, "tokens": 2,
    }  # fmt: skip
    other = [torch.tensor([[0.0, 2.0, 0.0, 9.0], [0.0, 3.0, 0.0, 9.0]])]  # an extra (pad) column is ignored
    result = compare_logits(ref, other)
    assert result["max_abs_logit_diff"] == 2.0
    assert result["top1_agreement"] == 0.5
    assert result["mean_kl"] > 0.1


def _run_cfg(model_dir, out, export, quant=None):
    return load_config({
        "output_dir": str(out),
        "model": {"name_or_path": str(model_dir)},
        "quant": quant or {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": {"rows": [{"instruction": "x", "output": "y"}]}, "formatter": {"kind": "alpaca"}},
        "export": export,
    })  # fmt: skip


@pytest.fixture
def adapted(tiny_llama_dir, tmp_path):
    """A 4-bit tiny Llama with a LoRA adapter whose B matrices are non-zero (as after training)."""
    from qlora_kit.model import ModelLoader, prepare_for_training
    from qlora_kit.model.adapters import AdapterBuilder

    def build(export, quant=None):
        cfg = _run_cfg(tiny_llama_dir, tmp_path / "run", export, quant)
        model, tok = ModelLoader(cfg.model, cfg.quant, device="cpu").load()
        model = AdapterBuilder(cfg.adapter).apply(prepare_for_training(model, False))
        perturb_lora(model)
        return model, tok, cfg

    return build


def _ids(tok):
    return [
        tok("Say what the cat paints. The cat paints a map.")["input_ids"],
        tok("Indeed, the moon.")["input_ids"],
    ]


def test_adapter_round_trip_in_a_fresh_process_gives_identical_logits(adapted, tmp_path):
    model, tok, cfg = adapted({"kind": "adapter"})
    result = build_exporter(cfg.export).export(model, tok, tmp_path / "run", cfg)
    adapter = result.adapter_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "run_config.yaml", "generation_config.json",
            "tokenizer.json"} <= {p.name for p in adapter.iterdir()}  # fmt: skip
    gen = json.loads((adapter / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    inputs = _ids(tok)
    torch.save(logits_of(model, inputs), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # the parent's thread count: same summation order
        from peft import AutoPeftModelForCausalLM, PeftModel
        from qlora_kit.config.io import load_config
        from qlora_kit.model.loading import ModelLoader
        from qlora_kit.model.quant import keep_4bit_weights_trainable
        from qlora_kit.export.verify import logits_of
        cfg = load_config({str(adapter / "run_config.yaml")!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        inputs = {inputs!r}
        loader = ModelLoader(cfg.model, cfg.quant, device="cpu")
        base, _ = loader.load()
        peft_model = PeftModel.from_pretrained(base, {str(adapter)!r})
        auto = AutoPeftModelForCausalLM.from_pretrained(
            {str(adapter)!r}, dtype=torch.float32, **loader.quantization.load_kwargs(loader))
        keep_4bit_weights_trainable(auto)
        for name, model in (("PeftModel", peft_model), ("AutoPeftModelForCausalLM", auto)):
            got = logits_of(model, inputs)
            for e, g in zip(expected, got):
                assert e.shape == g.shape, (name, e.shape, g.shape)
                assert torch.equal(e, g), (name, (e - g).abs().max().item())
        print("identical")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identical" in done.stdout


def test_merged_export_is_verified_against_both_bases(adapted, tmp_path):
    model, tok, cfg = adapted(
        {"kind": "merged", "dtype": "bfloat16", "max_shard_size": "200KB", "compare_bases": True}
    )
    rows = [{"input_ids": ids} for ids in _ids(tok)]
    result = build_exporter(cfg.export).export(model, tok, tmp_path / "run", cfg, verify_rows=rows)
    report = json.loads((result.merged_dir / "merge_report.json").read_text())
    assert report == result.merge_report and report["passed"] and not result.merge_failed
    assert report["prompt_source"] == "held-out rows"
    dequantized, original = report["bases"]["dequantized"], report["bases"]["original"]
    # The dequantized base is what the adapter was trained on: closer than the original weights.
    assert dequantized["mean_kl"] < original["mean_kl"]
    assert dequantized["max_abs_logit_diff"] < 0.05
    shards = sorted(p.name for p in result.merged_dir.glob("*.safetensors"))
    assert len(shards) > 1 and (result.merged_dir / "model.safetensors.index.json").is_file()

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    assert reloaded.dtype == torch.bfloat16
    assert "quantization_config" not in json.loads((result.merged_dir / "config.json").read_text())
    got = logits_of(reloaded, _ids(tok))
    expected = logits_of(model, _ids(tok))
    assert compare_logits(expected, got)["max_abs_logit_diff"] < 0.05


def test_a_merge_outside_the_tolerance_fails_loudly(adapted, tmp_path):
    model, tok, cfg = adapted({"kind": "merged", "merge_base": "original", "max_mean_kl": 1e-12})
    with pytest.warns(MergeVerificationWarning, match="MERGE VERIFICATION FAILED"):
        result = build_exporter(cfg.export).export(model, tok, tmp_path / "run", cfg)
    assert result.merge_failed and not result.merge_report["passed"]
    assert result.merge_report["prompt_source"] == "built-in prompts"
    assert "merge_base=dequantized" in result.merge_report["message"]
    assert (result.merged_dir / "merge_report.json").is_file()  # saved, and flagged


def test_a_failing_merge_leaves_nothing_half_written(adapted, tmp_path, monkeypatch):
    import qlora_kit.export.merged as merged

    model, tok, cfg = adapted({"kind": "merged"})

    def broken_save(*args, **kwargs):
        raise OSError("no space left on device")

    real_build = merged.build_merged

    def build_then_break(*args, **kwargs):
        built = real_build(*args, **kwargs)
        built.save_pretrained = broken_save
        return built

    monkeypatch.setattr(merged, "build_merged", build_then_break)
    with pytest.raises(StorageError, match="merged failed: no space"):
        build_exporter(cfg.export).export(model, tok, tmp_path / "run", cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapter"]


def test_merge_from_an_8bit_base_dequantizes_int8_weights(adapted, tmp_path):
    model, tok, cfg = adapted({"kind": "merged"}, quant={"kind": "bnb_8bit", "compute_dtype": "float32"})
    logits_of(model, _ids(tok))  # a forward pass moves bitsandbytes' int8 row scales into module.state
    result = build_exporter(cfg.export).export(model, tok, tmp_path / "run", cfg)
    dequantized = result.merge_report["bases"]["dequantized"]
    assert result.merge_report["passed"] and dequantized["max_abs_logit_diff"] < 0.05


def test_float16_models_are_checked_in_float32_on_the_cpu_from_the_same_weights(tiny_llama_dir):
    """float16 matmuls are emulated on CPUs (35x slower than float32): verification computes in float32
    from the float16 weights, which come back bit for bit."""
    from transformers import AutoModelForCausalLM

    from qlora_kit.export.verify import computes_upcast

    tok = make_tokenizer()
    half = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16)
    before = {name: p.detach().clone() for name, p in half.named_parameters()}
    assert computes_upcast(half)
    got = logits_of(half, _ids(tok))
    upcast = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16).float()
    assert not computes_upcast(upcast)
    for expected, actual in zip(logits_of(upcast, _ids(tok)), got, strict=True):
        assert torch.equal(expected, actual)  # the same float32 computation on the same weights
    for name, param in half.named_parameters():
        assert param.dtype == torch.float16 and torch.equal(param, before[name]), name


def test_a_float16_merge_on_the_cpu_is_verified_in_float32_and_loads_in_float32(adapted, tmp_path):
    from transformers import AutoModelForCausalLM

    from qlora_kit.generation import load_exported

    model, tok, cfg = adapted({"kind": "merged", "dtype": "float16"})
    result = build_exporter(cfg.export).export(model, tok, tmp_path / "run", cfg)
    assert result.merge_report["passed"]
    assert result.merge_report["computed_in"] == "float32 (the float16 weights, on the CPU)"
    assert AutoModelForCausalLM.from_pretrained(result.merged_dir).dtype == torch.float16  # saved as asked
    loaded = load_exported(result.merged_dir, device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32
