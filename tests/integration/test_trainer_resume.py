"""Checkpoints and resume on the 4-bit tiny Llama: exact continuation, refusals, atomic saves, keep-last-K."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

import qlora_kit.training.checkpoint as checkpoint_module
from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.errors import TrainingError
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import adapter_tensors, checkpoint_tensors
from qlora_kit.training import Callback, Trainer
from qlora_kit.training.checkpoint import CheckpointManager


def qlora_model(model_dir, dropout=0.1):
    """The tiny Llama in 4-bit with seeded LoRA adapters (dropout on: resume must restore the RNG)."""
    loader = ModelLoader(
        ModelConfig(name_or_path=str(model_dir)), Bnb4bit.Config(compute_dtype="float32"), "cpu"
    )
    model = prepare_for_training(loader.load_model(), grad_checkpointing=False)
    torch.manual_seed(0)
    return AdapterBuilder(AdapterBuilder.Config(r=4, alpha=8, dropout=dropout)).apply(model)


def token_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(5, 20))]
        rows.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return rows


def config(**overrides):
    settings = dict(
        epochs=2, micro_batch_size=2, grad_accum=2, grad_checkpointing=False, save_every=2, log_every=1,
        optimizer={"kind": "adamw_8bit", "lr": 5e-3, "weight_decay": 0.01}, max_grad_norm=0.3,
    )  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def adapters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class Crash(Callback):
    """Raises after step ``at`` (and after that step's checkpoint), like a killed job."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, state, metrics):
        if state.step == self.at:
            raise KeyboardInterrupt(f"killed after step {self.at}")


def test_interrupted_then_resumed_run_ends_with_the_same_adapters(tiny_llama_dir, tmp_path):
    rows = token_rows(6)  # 3 micro-batches -> 2 windows per epoch (the second one short), 4 steps
    reference = qlora_model(tiny_llama_dir)
    full = Trainer(config(save_every=3), output_dir=tmp_path / "full").fit(reference, rows)
    assert full.steps == 4

    with pytest.raises(KeyboardInterrupt):  # step 3 is the first window of the second epoch
        Trainer(config(save_every=3), output_dir=tmp_path / "cut", callbacks=[Crash(3)]).fit(
            qlora_model(tiny_llama_dir), rows
        )
    resumed_model = qlora_model(tiny_llama_dir)
    resumed = Trainer(config(save_every=3, resume="auto"), output_dir=tmp_path / "cut").fit(
        resumed_model, rows
    )

    assert resumed.steps == 4 and resumed.tokens == full.tokens
    ref, got = adapters(reference), adapters(resumed_model)
    for name in ref:
        assert torch.equal(got[name], ref[name]), name  # bit-identical
    # metrics.jsonl holds each step once, as the uninterrupted run's
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-6)


def test_read_one_step_late_a_crash_and_resume_still_end_bit_identical(tiny_llama_dir, tmp_path, deferring):
    rows = token_rows(6)
    settings = dict(save_every=3, optimizer={"kind": "adamw_torch", "lr": 5e-3, "weight_decay": 0.01})
    reference = qlora_model(tiny_llama_dir)
    full = Trainer(config(**settings), output_dir=tmp_path / "full").fit(reference, rows)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(**settings), output_dir=tmp_path / "cut", callbacks=[Crash(3)]).fit(
            qlora_model(tiny_llama_dir), rows
        )
    resumed_model = qlora_model(tiny_llama_dir)
    resumed = Trainer(config(**settings, resume="auto"), output_dir=tmp_path / "cut").fit(resumed_model, rows)
    assert deferring == [True, True, True]
    ref, got = adapters(reference), adapters(resumed_model)
    assert all(torch.equal(got[name], ref[name]) for name in ref)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-6)


def test_resume_from_an_explicit_path(tiny_llama_dir, tmp_path):
    rows = token_rows(8)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), output_dir=tmp_path / "a", callbacks=[Crash(2)]).fit(
            qlora_model(tiny_llama_dir), rows
        )
    cfg = config(resume=str(tmp_path / "a" / "checkpoint-2"))
    result = Trainer(cfg, output_dir=tmp_path / "b").fit(qlora_model(tiny_llama_dir), rows)
    assert result.steps == 4 and [r["step"] for r in result.history] == [3, 4]


@pytest.fixture(scope="module")
def checkpointed(tiny_llama_dir, tmp_path_factory):
    """An output dir with checkpoints at steps 1 and 2 of a 2-step run, and the rows it was trained on."""
    out, rows = tmp_path_factory.mktemp("checkpointed"), token_rows(8)
    Trainer(config(max_steps=2, save_every=1), output_dir=out).fit(qlora_model(tiny_llama_dir), rows)
    return out, rows


def test_resume_refuses_a_changed_config_naming_the_fields(tiny_llama_dir, checkpointed):
    out, rows = checkpointed
    cfg = config(max_steps=2, save_every=1, resume="auto", optimizer={"kind": "adamw_torch", "lr": 1e-3},
                 grad_accum=1)  # fmt: skip
    with pytest.raises(TrainingError) as info:
        Trainer(cfg, output_dir=out).fit(qlora_model(tiny_llama_dir), rows)
    message = str(info.value)
    assert (
        "train.grad_accum: 2 -> 1" in message
        and "train.optimizer.kind: 'adamw_8bit' -> 'adamw_torch'" in message
    )
    assert "optimizer.lr" not in message  # the learning rate may change on resume


def test_resume_with_a_lower_learning_rate_and_more_steps(tiny_llama_dir, checkpointed, tmp_path):
    """After a bad step a run resumes from its last checkpoint with a lower peak learning rate; a
    finished run extends to more steps, its schedule recomputed for the new total."""
    out, rows = tmp_path / "copy", checkpointed[1]
    shutil.copytree(checkpointed[0], out)
    cfg = config(max_steps=4, save_every=1, resume="auto",
                 optimizer={"kind": "adamw_8bit", "lr": 1e-3, "weight_decay": 0.01})  # fmt: skip
    result = Trainer(cfg, output_dir=out).fit(qlora_model(tiny_llama_dir), rows)
    assert result.steps == 4 and result.resumed_from == str(out / "checkpoint-2")
    # linear, 1 warmup step of 4: schedule steps 2 and 3 decay to 2/3 and 1/3 of the NEW peak
    assert [r["lr"] for r in result.history if "lr" in r][-2:] == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3])


def test_resume_refuses_changed_data(tiny_llama_dir, checkpointed):
    out, rows = checkpointed
    changed = [*rows[:-1], {"input_ids": [7, 8, 9], "labels": [7, 8, 9]}]
    with pytest.raises(TrainingError, match=r"data\.sha256"):
        Trainer(config(max_steps=2, save_every=1, resume="auto"), output_dir=out).fit(
            qlora_model(tiny_llama_dir), changed
        )


def test_resume_allows_a_changed_logging_cadence(tiny_llama_dir, checkpointed, tmp_path):
    out, rows = tmp_path / "copy", checkpointed[1]
    shutil.copytree(checkpointed[0], out)
    cfg = config(max_steps=2, save_every=1, resume="auto", log_every=5, eval_every=7, keep_last=3)
    assert Trainer(cfg, output_dir=out).fit(qlora_model(tiny_llama_dir), rows, rows).steps == 2


def test_crash_mid_save_leaves_the_previous_checkpoint_as_latest(tiny_llama_dir, tmp_path, monkeypatch):
    rows = token_rows(8)
    real_save = checkpoint_module._save_optimizer_and_state
    calls = []

    def crash_on_second_save(optimizer, state, extra, directory):
        calls.append(directory)
        if len(calls) == 2:  # half-written: some files exist, then the process dies
            real_save(optimizer, state, extra, directory)
            raise SystemExit("killed mid-save")
        return real_save(optimizer, state, extra, directory)

    monkeypatch.setattr(checkpoint_module, "_save_optimizer_and_state", crash_on_second_save)
    with pytest.raises(SystemExit):
        Trainer(config(max_steps=3, save_every=1), output_dir=tmp_path).fit(qlora_model(tiny_llama_dir), rows)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (tmp_path / ".checkpoint-2.tmp").is_dir()  # the partial save never got the final name
    assert CheckpointManager(tmp_path, keep_last=2).resolve("auto") == tmp_path / "checkpoint-1"
    cfg = config(max_steps=3, save_every=1, resume="auto")
    result = Trainer(cfg, output_dir=tmp_path).fit(qlora_model(tiny_llama_dir), rows)
    assert [r["step"] for r in result.history] == [1, 2, 3]
    assert not (tmp_path / ".checkpoint-2.tmp").exists()


def test_keeps_only_the_last_k_checkpoints(tiny_llama_dir, tmp_path):
    result = Trainer(config(max_steps=4, save_every=1, keep_last=2), output_dir=tmp_path).fit(
        qlora_model(tiny_llama_dir), token_rows(8)
    )
    assert [p.rsplit("/", 1)[1] for p in result.checkpoints] == ["checkpoint-3", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("checkpoint", ".checkpoint"))) == [
        "checkpoint-3",
        "checkpoint-4",
    ]


def test_resume_path_that_is_not_a_checkpoint(tiny_llama_dir, tmp_path):
    with pytest.raises(TrainingError, match="not a checkpoint folder"):
        Trainer(config(resume=str(tmp_path)), output_dir=tmp_path / "o").fit(
            qlora_model(tiny_llama_dir), token_rows(4)
        )


def test_resuming_a_finished_run_changes_nothing(tiny_llama_dir, tmp_path):
    rows = token_rows(4)
    cfg = config(max_steps=2, save_every=1, resume="auto")
    first = Trainer(cfg, output_dir=tmp_path).fit(qlora_model(tiny_llama_dir), rows, rows)
    model = qlora_model(tiny_llama_dir)
    again = Trainer(cfg, output_dir=tmp_path).fit(model, rows, rows)
    assert again.steps == 2 and again.history == first.history  # no step or evaluation repeated
    saved = first.checkpoints[-1]
    assert again.checkpoints[-1] == saved
    assert all(torch.equal(v, checkpoint_tensors(saved)[k]) for k, v in adapter_tensors(model).items())
