"""Token-budget batching: a step's rows laid out in as few packed passes as fit a budget give the same
losses and gradients as the reference layout (micro_batch_size padded rows per pass, accumulated).

Tolerance: fp32 on CPU, dropout 0 (the two layouts would draw different dropout masks); only the
summation order differs, so losses agree to 1e-5 relative and adapter weights after 3 steps to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.data import PackedCollator, PaddedCollator
from qlora_kit.formatting import build_formatter
from qlora_kit.model import AdapterBuilder, ModelLoader, prepare_for_training
from qlora_kit.testing import make_alpaca_rows
from qlora_kit.training import Trainer
from qlora_kit.training.batches import epoch_batches, pack_rows, token_budget_windows, windows


@pytest.fixture(scope="module")
def rows(tokenizer):
    formatter = build_formatter("alpaca")
    encoded = [formatter.encode(r, tokenizer, max_length=256) for r in make_alpaca_rows(24, seed=11)]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


def model(tiny_llama_dir):
    loaded = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), {"compute_dtype": "float32"}, "cpu")
    base = prepare_for_training(loaded.load_model(), grad_checkpointing=False)
    torch.manual_seed(0)
    return AdapterBuilder({"r": 4, "alpha": 8, "dropout": 0.0}).apply(base)


def fit(tiny_llama_dir, tmp_path, rows, collate, **train):
    cfg = TrainConfig(**{"max_steps": 3, "micro_batch_size": 2, "grad_accum": 3, "log_every": 1, "loss": "standard",
                         "grad_checkpointing": False, "optimizer": {"lr": 1e-3}, **train})  # fmt: skip
    trained = model(tiny_llama_dir)
    result = Trainer(cfg, output_dir=tmp_path, collate_fn=collate).fit(trained, rows)
    weights = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
    return [r["loss"] for r in result.history if "loss" in r], weights


def test_budget_layout_trains_like_the_reference_layout(tiny_llama_dir, tmp_path, rows):
    reference, ref_weights = fit(
        tiny_llama_dir, tmp_path / "ref", rows, PaddedCollator(0), micro_batch_tokens=None
    )
    packed, weights = fit(tiny_llama_dir, tmp_path / "packed", rows, PackedCollator(), micro_batch_tokens=160)
    one_pass, one_weights = fit(
        tiny_llama_dir, tmp_path / "one", rows, PackedCollator(), micro_batch_tokens="auto"
    )
    assert packed == pytest.approx(reference, rel=1e-5) and one_pass == pytest.approx(reference, rel=1e-5)
    worst = max((got[name] - value).abs().max().item() for got in (weights, one_weights)
                for name, value in ref_weights.items())  # fmt: skip
    assert worst < 1e-5, worst


def test_each_step_keeps_its_rows_whatever_the_layout(rows):
    lengths = [len(r["input_ids"]) for r in rows]
    tokens = PackedCollator().tokens
    for world in (1, 2):
        old = [
            sorted(
                i
                for rank in range(world)
                for micro in windows(epoch_batches(lengths, 2, 5, 1, None, rank, world), 3)[s]
                for i in micro
            )  # fmt: skip
            for s in range(len(windows(epoch_batches(lengths, 2, 5, 1, None, 0, world), 3)))
        ]
        new = [
            sorted(
                i
                for rank in range(world)
                for p in token_budget_windows(lengths, 2, 3, 5, 1, 100, tokens, None, rank, world)[s]
                for i in p
            )  # fmt: skip
            for s in range(len(old))
        ]
        assert new == old


def test_pack_rows_fills_passes_within_the_budget():
    lengths = [90, 10, 60, 40, 30, 120, 5]
    passes = pack_rows(list(range(7)), lengths, 130, PackedCollator().tokens)
    assert sorted(i for p in passes for i in p) == list(range(7))  # each row once
    assert all(sum(lengths[i] for i in p) <= 130 for p in passes if len(p) > 1)
    assert passes[0] == [5, 1]  # longest first, then first fit
    assert pack_rows(list(range(7)), lengths, 130, PackedCollator().tokens) == passes  # deterministic
    padded = pack_rows(list(range(7)), lengths, 130, PaddedCollator(0, pad_to_multiple_of=8).tokens)
    assert all(len(p) * -(-max(lengths[i] for i in p) // 8) * 8 <= 130 for p in padded if len(p) > 1)


def test_a_memory_budget_makes_auto_take_checkpointing_and_train_the_same_numbers(
    tiny_llama_dir, tmp_path, rows, caplog
):
    """`train.memory_budget_gib` between the planned peaks with and without checkpointing: `auto` turns
    checkpointing on (the log says so), and the run computes what the unbudgeted run computes."""
    import logging

    from qlora_kit.planning.live import _estimator
    from qlora_kit.planning.memory import Settings

    probe = TrainConfig(loss="standard")
    estimate_at, loss = _estimator(probe, model(tiny_llama_dir))
    tokens = sum(len(r["input_ids"]) for r in rows[:6])  # one step: 2 rows x 3 accumulated
    lean, full = (estimate_at(Settings(ckpt, False, loss), tokens).needed for ckpt in (True, False))
    assert lean < full
    budget = (lean + full) / 2 / 0.9 / 2**30  # the lean plan fits with the margin, the full one does not
    with caplog.at_level(logging.INFO, logger="qlora_kit.training.session"):
        reference, ref_weights = fit(tiny_llama_dir, tmp_path / "free", rows, PackedCollator(),
                                     micro_batch_tokens="auto", grad_checkpointing="auto")  # fmt: skip
        budgeted, weights = fit(tiny_llama_dir, tmp_path / "lean", rows, PackedCollator(), micro_batch_tokens="auto",
                                grad_checkpointing="auto", memory_budget_gib=budget)  # fmt: skip
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory: ")]
    assert decisions[0].startswith("memory: checkpointing off") and decisions[1].startswith(
        "memory: checkpointing on"
    )
    assert budgeted == pytest.approx(reference, rel=1e-5)
    assert max((weights[n] - w).abs().max().item() for n, w in ref_weights.items()) < 1e-5


def test_a_budget_between_no_and_some_checkpointing_checkpoints_only_the_first_layers(
    tiny_llama_dir, tmp_path, rows, caplog
):
    """A budget that no checkpointing misses but one checkpointed layer (of the tiny Llama's 2) meets: `auto`
    checkpoints that one layer only (the log and the layers' flags say so), with the same numbers."""
    import logging

    from transformers.modeling_layers import GradientCheckpointingLayer

    from qlora_kit.planning.live import _estimator
    from qlora_kit.planning.memory import Settings

    estimate_at, loss = _estimator(TrainConfig(loss="standard"), model(tiny_llama_dir))
    tokens = sum(len(r["input_ids"]) for r in rows[:6])
    some, none = (
        estimate_at(Settings(k > 0, False, loss, checkpoint_layers=k), tokens).needed for k in (1, 0)
    )
    assert some < none
    budget = (some + none) / 2 / 0.9 / 2**30
    flags = []
    original = Trainer.fit

    def fit_and_read_flags(self, trained, *args, **kwargs):  # the flags as training left them
        result = original(self, trained, *args, **kwargs)
        flags.extend(
            m.gradient_checkpointing for m in trained.modules() if isinstance(m, GradientCheckpointingLayer)
        )
        return result

    with (
        caplog.at_level(logging.INFO, logger="qlora_kit.training.session"),
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(Trainer, "fit", fit_and_read_flags)
        reference, ref_weights = fit(tiny_llama_dir, tmp_path / "free", rows, PackedCollator(),
                                     micro_batch_tokens="auto", grad_checkpointing="auto")  # fmt: skip
        budgeted, weights = fit(tiny_llama_dir, tmp_path / "some", rows, PackedCollator(), micro_batch_tokens="auto",
                                grad_checkpointing="auto", memory_budget_gib=budget)  # fmt: skip
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory: ")]
    assert decisions[1].startswith("memory: checkpointing on for the first 1 decoder layers"), decisions
    assert flags == [False, False, True, False]  # the free run's two layers, then the budgeted run's
    assert budgeted == pytest.approx(reference, rel=1e-5)
    assert max((weights[n] - w).abs().max().item() for n, w in ref_weights.items()) < 1e-5


def test_a_memory_budget_from_the_command_line_is_what_train_plans_for(tiny_run_config, capsys):
    """`qlora-kit train ... train.memory_budget_gib=X`: the memory line names the budget, and a budget
    nothing fits in still trains (checkpointing on, one row per pass) instead of failing."""
    from qlora_kit.cli import main

    cfg = tiny_run_config(max_steps=2, micro_batch_size=4)
    assert main(["train", str(cfg), "train.memory_budget_gib=0.01"]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("memory: "))
    assert line.startswith("memory: checkpointing on") and "of 0.01 GiB)" in line


@pytest.fixture(scope="module")
def six_layer_dir(tmp_path_factory, tokenizer):
    from qlora_kit.testing import make_tiny_llama

    path = tmp_path_factory.mktemp("six-layers")
    make_tiny_llama(path, tokenizer, num_hidden_layers=6, max_position_embeddings=4096)
    return path


def _choose_on_a_fake_gpu(model_dir, monkeypatch, capacity: int, ram: int, tokens: int):
    """choose_layout as on a CUDA device of ``capacity`` bytes, on a host of ``ram`` bytes (the
    decision is arithmetic on the live model's shape: no GPU needed to make it)."""
    from qlora_kit.planning import live

    monkeypatch.setattr(live, "_capacity", lambda device, budget=None: capacity)
    monkeypatch.setattr(live, "host_ram", lambda: ram)
    cfg = TrainConfig(loss="standard", grad_checkpointing="auto", activation_offload="auto")
    return live.choose_layout(cfg, model(model_dir), torch.device("cuda"), step_tokens=tokens,
                              row_tokens=tokens, pass_tokens=tokens)  # fmt: skip


def test_auto_offload_on_a_gpu_offloads_the_fewest_layers_that_fit(six_layer_dir, monkeypatch):
    from qlora_kit.planning.live import _estimator
    from qlora_kit.planning.memory import Settings

    estimate_at, _ = _estimator(TrainConfig(loss="standard"), model(six_layer_dir))
    tokens = 4096
    two, three, every = (
        estimate_at(Settings(True, True, "standard", offload_layers=m), tokens) for m in (2, 3, None)
    )
    assert every.needed < three.needed < two.needed and three.host_bytes < every.host_bytes
    capacity = int((three.needed + two.needed) / 2 / 0.9)  # fits three layers offloaded, not two
    decision = _choose_on_a_fake_gpu(six_layer_dir, monkeypatch, capacity, 64 * 2**30, tokens)
    assert decision.describe().startswith(
        "checkpointing on, activation offload on for the first 3 decoder layers"
    ), decision.describe()
    assert decision.estimate.host_bytes == three.host_bytes == 3 * tokens * 64 * 4  # fp32 inputs of 3 layers


def test_offload_that_would_pin_most_of_the_host_memory_is_refused(six_layer_dir, monkeypatch):
    from qlora_kit.errors import TrainingError

    with pytest.raises(TrainingError, match=r"would pin .* GiB of host memory .* this machine has"):
        _choose_on_a_fake_gpu(six_layer_dir, monkeypatch, capacity=1, ram=1024, tokens=4096)


def test_explicit_offload_that_would_pin_most_of_the_host_memory_is_refused(six_layer_dir, monkeypatch):
    from qlora_kit.errors import TrainingError
    from qlora_kit.planning import live

    monkeypatch.setattr(live, "host_ram", lambda: 1024)
    cfg = TrainConfig(
        loss="standard", grad_checkpointing=True, activation_offload=True, micro_batch_tokens=None
    )
    with pytest.raises(TrainingError, match=r"would pin .* GiB of host memory"):
        live.choose_layout(cfg, model(six_layer_dir), torch.device("cuda"), step_tokens=4096, row_tokens=4096,
                           pass_tokens=4096)  # fmt: skip
    monkeypatch.setattr(live, "host_ram", lambda: 64 * 2**30)
    decision = live.choose_layout(cfg, model(six_layer_dir), torch.device("cuda"), step_tokens=4096,
                                  row_tokens=4096, pass_tokens=4096)  # fmt: skip
    assert decision.describe().startswith("checkpointing on, activation offload on, micro_batch_size rows")
