"""``sdpa_varlen`` on the CPU: the collator's fixed-shape lengths, the collator choice, where the loader adopts it,
and that everything but a packed 16-bit CUDA pass is SDPA, exactly. The kernel itself: tests/gpu."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from qlora_kit.compat import attn_implementation
from qlora_kit.config import DataConfig, ModelConfig, SourceConfig
from qlora_kit.data import AutoPackCollator, PackedCollator, make_collator
from qlora_kit.errors import ModelLoadError
from qlora_kit.model import ModelLoader
from qlora_kit.model import varlen_attention as va
from qlora_kit.model.checks import check_attn_implementation
from qlora_kit.model.quant import NoQuant

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    {"input_ids": [8, 9, 10, 11, 12], "labels": [8, -100, 10, 11, 12]},
]


def test_cumulative_lengths_pad_with_empty_sequences_to_a_power_of_two():
    assert va.cumulative_lengths([3, 5], slots_at_least=4).tolist() == [0, 3, 8, 8]
    assert va.cumulative_lengths([3, 5, 2, 1], slots_at_least=4).tolist() == [0, 3, 8, 10, 11, 11, 11, 11]
    cu = va.cumulative_lengths([1] * 20)
    assert cu.numel() == 32 and cu.dtype == torch.int32 and cu[20:].tolist() == [20] * 12


def test_packed_collator_varlen_kwargs_keep_one_shape_per_width():
    collate = PackedCollator(varlen_kwargs=True, widths=(16,))
    one, two = collate(ROWS), collate(ROWS[:1])
    assert one["cu_seq_lens_q"].shape == two["cu_seq_lens_q"].shape == (16,)
    assert one["cu_seq_lens_q"][:5].tolist() == [0, 3, 8, 13, 16]  # filler: examples no longer than a row
    assert one["max_length_q"] == one["max_length_k"] == 16 and isinstance(one["max_length_q"], int)


def test_make_collator_packs_every_batch_for_sdpa_varlen(tokenizer):
    data = DataConfig(source=SourceConfig(rows=[{"text": "x"}]))
    collate = make_collator(data, tokenizer, attn_implementation="sdpa_varlen")
    assert isinstance(collate, AutoPackCollator) and collate.packed.varlen_kwargs
    assert collate.packs([8, 7])  # one padded position is enough: the kernel pays nothing for packing
    assert not make_collator(data, tokenizer, attn_implementation="sdpa").packs([8, 7])
    assert not collate.packs([8, 8])  # nothing to remove: a plain batch, which SDPA attends without a mask


def test_the_loader_keeps_sdpa_off_cuda_and_refuses_sdpa_varlen_there(tiny_llama_dir, caplog):
    loader = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), NoQuant.Config(), "cpu")
    assert attn_implementation(loader.load_model()) == "sdpa"
    with pytest.raises(ModelLoadError, match=r"model.attn_implementation=sdpa_varlen needs a CUDA GPU"):
        check_attn_implementation("sdpa_varlen", torch.device("cpu"), "bfloat16")
    with pytest.raises(
        ModelLoadError, match=r"sdpa_varlen runs in float16 or bfloat16 only.*quant.compute_dtype"
    ):
        check_attn_implementation("sdpa_varlen", torch.device("cuda"), "float32")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not va.adopt(model, None, torch.device("cpu"), "bfloat16")
    assert not va.adopt(model, "sdpa", torch.device("cuda"), "bfloat16")  # asked for plain SDPA
    assert not va.adopt(model, None, torch.device("cuda"), "float32")  # the kernel is 16-bit only
    eager = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    with caplog.at_level("WARNING"):
        assert not va.adopt(eager, "sdpa_varlen", torch.device("cuda"), "bfloat16")
    assert "runs eager attention, not SDPA" in caplog.text


def test_sdpa_varlen_is_sdpa_wherever_the_kernel_does_not_run(tiny_llama_dir, tmp_path):
    """On the CPU a packed pass with the lengths falls back to SDPA with the block-diagonal mask built from
    them: the same logits as plain SDPA given the positions, each example as if alone; and a saved model does not name the implementation in its config."""
    torch.manual_seed(0)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    varlen = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    va.register()
    varlen.set_attn_implementation(va.NAME)
    assert attn_implementation(varlen) == "sdpa_varlen"
    batch = PackedCollator(varlen_kwargs=True, widths=(12,))(ROWS)
    plain = {k: batch[k] for k in ("input_ids", "position_ids")}
    with torch.no_grad():  # no cache: with one, transformers does not look for packed examples
        expected = sdpa(**plain, use_cache=False).logits
        # the packed pass's empty 4-D mask becomes the block-diagonal one SDPA needs
        assert va.is_packed_mask(batch["attention_mask"])
        assert torch.equal(varlen(**batch, use_cache=False).logits, expected)
        assert not torch.equal(
            sdpa(input_ids=batch["input_ids"], use_cache=False).logits, expected
        )  # it matters
        second = sdpa(input_ids=torch.tensor([ROWS[1]["input_ids"]])).logits  # the second example alone
        torch.testing.assert_close(expected[:, 3:8], second, rtol=1e-5, atol=1e-5)
    varlen.save_pretrained(tmp_path)
    assert "sdpa_varlen" not in (tmp_path / "config.json").read_text()
