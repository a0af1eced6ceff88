"""GGUF export: F16/BF16/Q8_0 files that transformers reloads to the same logits and tokenizer, llama.cpp's
layout (tensor types, tied head, chat template, special ids), and clear refusals of what is unsupported."""

from __future__ import annotations

import gguf
import pytest
import torch

from qlora_kit.errors import ExportError
from qlora_kit.export.gguf_verify import verify_gguf
from qlora_kit.export.gguf_vocab import llama_cpp_pre_tokenizer
from qlora_kit.export.gguf_writer import write_gguf
from qlora_kit.testing import make_alpaca_rows, make_distilgpt2_shape, make_tiny_llama, make_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def rows(chat_tokenizer):
    return [
        {"input_ids": chat_tokenizer(r["instruction"] + " " + r["output"])["input_ids"]}
        for r in make_alpaca_rows(8, 3)
    ]


def _fields(path):
    reader = gguf.GGUFReader(path)
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")}


# Measured on this tiny bf16 Llama (8 held-out rows, 154 tokens): F16 and BF16 mean KL 1.35e-7 (the weights
# reload bit-identical; the rest is rms_norm_eps stored as float32), top-1 100%; Q8_0 mean KL 1.8e-6, top-1 98.7%.
@pytest.mark.parametrize(("dtype", "max_kl", "min_top1", "weight_type"), [
    ("f16", 1e-5, 1.0, "F16"), ("bf16", 1e-5, 1.0, "BF16"), ("q8_0", 1e-4, 0.95, "Q8_0"),
])  # fmt: skip
def test_round_trip_through_transformers(
    tmp_path, chat_tokenizer, rows, dtype, max_kl, min_top1, weight_type
):
    model = make_tiny_llama(tokenizer=chat_tokenizer).to(torch.bfloat16)
    path = write_gguf(model, chat_tokenizer, tmp_path / f"model-{dtype}.gguf", dtype=dtype)
    report = verify_gguf(path, model, chat_tokenizer, rows, max_mean_kl=max_kl, min_top1_agreement=min_top1)
    assert report["passed"], report["message"]
    assert report["logits"]["mean_kl"] <= max_kl and report["logits"]["top1_agreement"] >= min_top1
    assert report["tokenizer"] == {
        "encodes_identically": True, "mismatched_encodings": 0, "texts": 9,
        "same_eos": True, "same_bos": True, "same_chat_template": True,
    }  # fmt: skip
    assert (report["gguf_dtype"], report["prompts"], report["prompt_source"]) == (
        weight_type,
        8,
        "held-out rows",
    )
    reader, _ = _fields(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["output.weight"] == weight_type
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"  # 1-D stays F32
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_metadata_carries_chat_template_special_ids_and_tied_head(tmp_path, chat_tokenizer):
    model = make_tiny_llama(tokenizer=chat_tokenizer, tie_word_embeddings=True)
    path = write_gguf(model, chat_tokenizer, tmp_path / "tied.gguf", dtype="f16", name="tiny-test")
    reader, fields = _fields(path)
    assert "output.weight" not in {t.name for t in reader.tensors}  # llama.cpp reuses token_embd
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny-test"
    assert fields["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    eos = chat_tokenizer.eos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.bos_token_id"] == eos
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.block_count"] == 2
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size
    report = verify_gguf(path, model, chat_tokenizer)  # built-in prompts
    assert report["passed"] and report["prompt_source"] == "built-in prompts"


def test_verification_fails_for_a_different_model_or_tokenizer(tmp_path, chat_tokenizer, rows):
    model = make_tiny_llama(tokenizer=chat_tokenizer)
    path = write_gguf(model, chat_tokenizer, tmp_path / "m.gguf", dtype="f16")
    other = make_tiny_llama(tokenizer=chat_tokenizer)
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)
    report = verify_gguf(path, other, chat_tokenizer, rows)
    assert not report["passed"] and report["message"].startswith("GGUF VERIFICATION FAILED")
    assert "mean KL" in report["message"]
    plain = make_tokenizer()  # no chat template
    report = verify_gguf(path, model, plain, rows)
    assert not report["passed"] and report["tokenizer"]["same_chat_template"] is False
    assert "same chat template is False" in report["message"]


def test_non_llama_model_is_refused_naming_the_supported_ones(tmp_path, tokenizer):
    gpt2 = make_distilgpt2_shape(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    with pytest.raises(ExportError, match=r"supports llama-architecture models \(llama, mistral.*'gpt2'"):
        write_gguf(gpt2, tokenizer, tmp_path / "gpt2.gguf")
    assert list(tmp_path.iterdir()) == []


def test_sentencepiece_style_tokenizer_is_refused_and_nothing_is_left(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁a": 3, "<0x41>": 4}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    spm = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    model = make_tiny_llama(tokenizer=spm)
    with pytest.raises(ExportError, match="SentencePiece-style .*byte fallback.*convert_hf_to_gguf"):
        write_gguf(model, spm, tmp_path / "spm.gguf")
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed


def test_float16_overflow_is_refused(tmp_path, tokenizer):
    model = make_tiny_llama(tokenizer=tokenizer)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = 1e5
    with pytest.raises(
        ExportError, match=r"blk\.0\.ffn_up\.weight has values beyond float16.s range; use dtype bf16"
    ):
        write_gguf(model, tokenizer, tmp_path / "big.gguf", dtype="f16")
    assert write_gguf(model, tokenizer, tmp_path / "big.gguf", dtype="bf16").is_file()


@pytest.mark.parametrize(("pre", "name"), [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                                               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}},
        {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
])  # fmt: skip
def test_pre_tokenizer_gets_its_llama_cpp_name(pre, name):
    assert llama_cpp_pre_tokenizer({"pre_tokenizer": pre}) == name


def test_unknown_pre_tokenizer_is_refused_with_the_override_named():
    pre = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "x"}},
                                                 {"type": "ByteLevel", "use_regex": False}]}  # fmt: skip
    with pytest.raises(ExportError, match="pass pre_tokenizer="):
        llama_cpp_pre_tokenizer({"pre_tokenizer": pre})
