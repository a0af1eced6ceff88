"""The Trainer on the real QLoRA path (tiny Llama in 4-bit NF4 on the CPU, LoRA on every linear layer)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import GeneralTracker
from torch.optim.optimizer import register_optimizer_step_pre_hook

from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.data.collate import PackedCollator
from qlora_kit.errors import ConfigError, DataError, TrainingError
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import adapter_tensors, checkpoint_tensors
from qlora_kit.training import Callback, Trainer
from qlora_kit.training.batches import epoch_batches


def qlora_model(model_dir, r=8, dropout=0.0):
    """The tiny Llama in 4-bit with fresh, seeded LoRA adapters."""
    model = ModelLoader(
        ModelConfig(name_or_path=str(model_dir)), Bnb4bit.Config(compute_dtype="float32"), "cpu"
    )
    model = prepare_for_training(model.load_model(), grad_checkpointing=False)
    torch.manual_seed(0)
    return AdapterBuilder(AdapterBuilder.Config(r=r, alpha=2 * r, dropout=dropout)).apply(model)


def token_rows(n, seed=0, lengths=(6, 24)):
    """Rows of random ids whose first 1-3 tokens are a prompt (label -100)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 300) for _ in range(rng.randint(*lengths))]
        prompt = rng.randint(1, 3)
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def config(**overrides):
    settings = dict(
        micro_batch_size=2, grad_accum=1, max_steps=2, grad_checkpointing=False, log_every=1, loss="standard"
    )  # the tests hook the head: one forward per step
    return TrainConfig(**{**settings, **overrides})


def adapter_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen_state(model):
    tensors = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for name, module in model.named_modules():  # the 4-bit blocks' scales live in the quant state
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            tensors[f"{name}.absmax"] = state.absmax.clone()
    return tensors


def test_overfits_a_few_rows_and_only_adapters_change(tiny_llama_dir, tokenizer, tmp_path):
    model = qlora_model(tiny_llama_dir)
    rows = token_rows(4, lengths=(8, 12))
    base_before, adapters_before = frozen_state(model), adapter_state(model)
    cfg = config(
        max_steps=None, epochs=12, optimizer={"lr": 1e-2}, eval_every=6, save_every=8,
        keep_last=2, generation_prompts=["Say what the cat"],
    )  # fmt: skip
    result = Trainer(cfg, output_dir=tmp_path, tokenizer=tokenizer, max_new_tokens=4).fit(model, rows, rows)

    losses = [r["loss"] for r in result.history if "loss" in r]
    assert result.steps == 24 and len(losses) == 24
    # the random tiny model's frozen head and norms cap how far the loss can fall: ~6.0 -> ~4.9
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.6, losses
    assert result.eval_loss < losses[0] - 0.6 and result.eval_perplexity == pytest.approx(
        torch.tensor(result.eval_loss).exp().item()
    )
    base_after = frozen_state(model)
    assert base_before.keys() == base_after.keys()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before), "the 4-bit base changed"
    assert any(not torch.equal(adapters_before[k], v) for k, v in adapter_state(model).items())

    # outputs: metrics, curve, generations, the last K checkpoints (adapter-only weights)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == result.history
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= records[1].keys()
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 6, 12, 18, 24]  # step 0: the untrained baseline
    assert records[0] == evals[0] and evals[0]["eval_loss"] > evals[-1]["eval_loss"] + 0.6
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    generations = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [g["step"] for g in generations] == [0, 6, 12, 18, 24]
    assert [p.rsplit("-", 1)[1] for p in result.checkpoints] == ["16", "24"]
    saved = checkpoint_tensors(result.checkpoints[-1])
    assert saved.keys() == adapter_tensors(model).keys()
    assert all(torch.equal(saved[k], v) for k, v in adapter_tensors(model).items())
    assert (tmp_path / "checkpoint-24" / "adapter" / "adapter_config.json").is_file()
    state = json.loads((tmp_path / "checkpoint-24" / "trainer_state.json").read_text())["trainer"]
    assert state["step"] == 24 and state["epoch"] == 11 and state["step_in_epoch"] == 2


def test_accumulation_2x2_equals_1x4_with_uneven_lengths(tiny_llama_dir, tmp_path, monkeypatch):
    # the first micro-batch gets the two long rows, the second the two short ones: a mean of the two
    # per-micro-batch means would weight each short-row token ~5x more than a long-row token
    long, short = token_rows(2, seed=1, lengths=(28, 30)), token_rows(2, seed=2, lengths=(5, 6))
    first, second = epoch_batches(range(4), micro_batch_size=2, seed=TrainConfig().seed, epoch=0)
    rows = [None] * 4
    for index, row in zip([*first, *second], [*long, *short], strict=True):
        rows[index] = row
    counts = [sum(1 for label in rows[i]["labels"][1:] if label != -100) for i in [*first, *second]]
    assert sum(counts[:2]) > 4 * sum(counts[2:])
    grads = {}

    def first_step_grads(micro_batch_size, grad_accum, out):
        model = qlora_model(tiny_llama_dir)
        seen = []

        def capture(optimizer, args, kwargs):
            seen.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        handle = register_optimizer_step_pre_hook(capture)
        try:
            cfg = config(
                micro_batch_size=micro_batch_size, grad_accum=grad_accum, max_steps=1, max_grad_norm=None
            )
            Trainer(cfg, output_dir=tmp_path / out).fit(model, rows)
        finally:
            handle.remove()
        return seen[0]

    grads["2x2"] = first_step_grads(2, 2, "a")
    grads["1x4"] = first_step_grads(4, 1, "b")
    assert grads["2x2"].keys() == grads["1x4"].keys() and len(grads["1x4"]) > 0
    for name, grad in grads["1x4"].items():
        torch.testing.assert_close(grads["2x2"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in grads["1x4"].values())


def test_packed_batches_train(tiny_llama_dir, tmp_path):
    model = qlora_model(tiny_llama_dir)
    result = Trainer(config(), output_dir=tmp_path, collate_fn=PackedCollator()).fit(model, token_rows(4))
    assert result.steps == 2 and result.tokens == sum(len(r["input_ids"]) for r in token_rows(4))


class _Raise(Callback):
    def __init__(self, at_step, exc):
        self.at_step, self.exc = at_step, exc

    def on_step_end(self, state, metrics):
        if state.step == self.at_step:
            raise self.exc


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_llama_dir, tmp_path):
    model = qlora_model(tiny_llama_dir)
    forwards = []

    def poison(module, args, output):  # the 3rd forward (step 3, one micro-batch per step) overflows
        forwards.append(1)
        return output * float("inf") if len(forwards) == 3 else output

    model.get_output_embeddings().register_forward_hook(poison)
    trainer = Trainer(config(max_steps=5, save_every=1), output_dir=tmp_path)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 3.*checkpoint-2"):
        trainer.fit(model, token_rows(10))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    saved = checkpoint_tensors(tmp_path / "checkpoint-2")
    assert all(torch.equal(saved[k], v) for k, v in adapter_tensors(model).items()), (
        "the bad step updated weights"
    )


def test_read_one_step_late_a_non_finite_step_still_updates_nothing(tiny_llama_dir, tmp_path, deferring):
    """With the step's numbers read at the next step, the optimizer skips the bad step's update on the
    device and the next step stops before its own: the weights are those after step 2."""
    rows = token_rows(10)
    after_two = qlora_model(tiny_llama_dir)
    Trainer(config(max_steps=2), output_dir=tmp_path / "two").fit(after_two, rows)
    model = qlora_model(tiny_llama_dir)
    forwards = []

    def poison(module, args, output):
        forwards.append(1)
        return output * float("inf") if len(forwards) == 3 else output

    model.get_output_embeddings().register_forward_hook(poison)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 3; the weights were not updated"):
        Trainer(config(max_steps=5, log_every=5), output_dir=tmp_path / "bad").fit(model, rows)
    assert deferring == [True, True]
    want = adapter_tensors(after_two)
    assert all(torch.equal(t, want[k]) for k, t in adapter_tensors(model).items())


def test_window_without_supervised_tokens_is_reported_and_skipped(tiny_llama_dir, tmp_path, caplog):
    rows = token_rows(3)
    rows[1] = {"input_ids": rows[1]["input_ids"], "labels": [-100] * len(rows[1]["input_ids"])}
    model = qlora_model(tiny_llama_dir)
    result = Trainer(config(micro_batch_size=1, max_steps=3), output_dir=tmp_path).fit(model, rows)
    skipped = [r for r in result.history if r.get("skipped")]
    assert len(skipped) == 1 and "no supervised token" in caplog.text
    assert result.steps == 3 and all(torch.isfinite(p).all() for p in adapter_state(model).values())


def test_out_of_memory_names_the_knobs(tiny_llama_dir, tmp_path):
    model = qlora_model(tiny_llama_dir)

    def oom(module, args, output):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.get_output_embeddings().register_forward_hook(oom)
    with pytest.raises(TrainingError, match="out of memory at step 1.*micro_batch_size.*grad_checkpointing"):
        Trainer(config(), output_dir=tmp_path).fit(model, token_rows(4))


def test_callback_can_stop_the_run_with_a_final_checkpoint(tiny_llama_dir, tmp_path):
    class StopAtTwo(Callback):
        def on_step_end(self, state, metrics):
            state.should_stop = state.step == 2

    result = Trainer(config(max_steps=10), output_dir=tmp_path, callbacks=[StopAtTwo()]).fit(
        qlora_model(tiny_llama_dir), token_rows(8)
    )
    assert result.steps == 2 and result.stopped_early
    assert result.checkpoints[-1].endswith("checkpoint-2")


@pytest.mark.parametrize("kind", ["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_each_optimizer_trains_the_adapters(tiny_llama_dir, tmp_path, kind):
    model = qlora_model(tiny_llama_dir)
    before = adapter_state(model)
    cfg = config(max_steps=1, optimizer={"kind": kind, "lr": 1e-3}, scheduler={"kind": "constant"})
    Trainer(cfg, output_dir=tmp_path).fit(model, token_rows(2))
    assert any(not torch.equal(before[k], v) for k, v in adapter_state(model).items())


def test_mixed_precision_from_config_and_back(tiny_llama_dir, tmp_path):
    """bf16 autocast when asked (here on the CPU), then none again in the same process."""
    for precision, expected in [("bf16", torch.bfloat16), ("no", torch.float32)]:
        model = qlora_model(tiny_llama_dir)
        seen = []
        adapter_linear = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default
        adapter_linear.register_forward_hook(
            lambda module, args, output, seen=seen: seen.append(output.dtype)
        )
        result = Trainer(config(max_steps=1, mixed_precision=precision), output_dir=tmp_path / precision).fit(
            model, token_rows(2)
        )
        assert set(seen) == {expected} and result.steps == 1
        assert not hasattr(model, "_original_forward")  # the autocast wrapper is removed after fit


def test_datasets_rows_with_a_length_grouping_planner(tiny_llama_dir, tmp_path):
    from datasets import Dataset

    from qlora_kit.data.sampling import length_grouped_batches

    rows = Dataset.from_list(token_rows(8, lengths=(4, 30)))
    planned = []

    def planner(lengths, micro_batch_size, generator):
        batches = length_grouped_batches(lengths, micro_batch_size, generator, mega_batch_mult=4)
        planned.append([[len(rows[i]["input_ids"]) for i in b] for b in batches])
        return batches

    result = Trainer(config(max_steps=4), output_dir=tmp_path, batch_planner=planner).fit(
        qlora_model(tiny_llama_dir), rows, rows.select(range(2))
    )
    assert result.steps == 4 and result.eval_loss is not None
    lengths_sorted = sorted(len(r) for r in rows["input_ids"])
    assert sorted(n for b in planned[0] for n in b) == lengths_sorted  # one epoch covers every row once


class _FlatEval(Callback):
    """Reports the same eval loss every time (runs before EarlyStopping, which the trainer adds last)."""

    def on_evaluate(self, state, metrics):
        metrics["eval_loss"] = 3.0


def test_early_stopping_after_patience_evaluations_without_improvement(tiny_llama_dir, tmp_path):
    cfg = config(max_steps=10, eval_every=1, callbacks=[{"kind": "early_stopping", "patience": 2}])
    rows = token_rows(4)
    result = Trainer(cfg, output_dir=tmp_path, callbacks=[_FlatEval()]).fit(
        qlora_model(tiny_llama_dir), rows, rows
    )
    # the baseline eval at step 0 sets the best, evals 1 and 2 do not improve on it: stop after step 2,
    # with a checkpoint
    assert result.steps == 2 and result.stopped_early
    assert result.checkpoints[-1].endswith("checkpoint-2")


class _ListTracker(GeneralTracker):
    name = "list"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.logged = []

    @property
    def tracker(self):
        return self.logged

    def store_init_configuration(self, values):
        self.logged.append(("config", values))

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, values))


def _fresh_cpu_accelerator(**kwargs):
    # accelerate's device/precision state is process-wide; a test building its own Accelerator resets it
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True, **kwargs)


def test_a_given_accelerator_and_its_trackers_receive_the_metrics(tiny_llama_dir, tmp_path):
    tracker = _ListTracker()
    accelerator = _fresh_cpu_accelerator(log_with=[tracker])
    accelerator.init_trackers("test")
    rows = token_rows(4)
    Trainer(config(eval_every=2), output_dir=tmp_path, accelerator=accelerator).fit(
        qlora_model(tiny_llama_dir), rows, rows
    )
    steps = [step for step, values in tracker.logged if "loss" in values]
    assert steps == [1, 2] and any("eval_loss" in values for _, values in tracker.logged)


def test_an_accelerator_that_accumulates_itself_is_refused(tiny_llama_dir, tmp_path):
    accelerator = _fresh_cpu_accelerator(gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=1"):
        Trainer(config(), output_dir=tmp_path, accelerator=accelerator).fit(
            qlora_model(tiny_llama_dir), token_rows(2)
        )


def test_rows_without_labels_are_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(DataError, match="lacks \\['labels'\\]"):
        Trainer(config(), output_dir=tmp_path).fit(qlora_model(tiny_llama_dir), [{"input_ids": [1, 2, 3]}])


def test_evaluation_lays_its_rows_out_by_the_token_budget(tiny_llama_dir, tmp_path, monkeypatch):
    """Without eval_batch_size, evaluation packs its rows into passes of the training pass's budget (fewer
    passes than micro_batch_size rows each) on CUDA (here: on the CPU as if it were), and the eval loss is
    the same as one row per pass. On the CPU itself it keeps micro_batch_size rows a pass."""
    from qlora_kit.training import layout, loop

    passes_seen = []
    original = loop.evaluate

    def spy(model, rows, collate_fn, batch_size, loss_fn, accelerator, passes=None):
        passes_seen.append(passes)
        return original(model, rows, collate_fn, batch_size, loss_fn, accelerator, passes)

    monkeypatch.setattr(loop, "evaluate", spy)
    rows, eval_rows = token_rows(8), token_rows(12, seed=5)
    Trainer(config(max_steps=1, eval_at_start=False, micro_batch_tokens=64), output_dir=tmp_path / "cpu",
            collate_fn=PackedCollator()).fit(qlora_model(tiny_llama_dir), rows, eval_rows)  # fmt: skip
    assert passes_seen.pop() is None  # the CPU: micro_batch_size rows a pass
    monkeypatch.setattr(layout, "BUDGETED_EVAL_DEVICES", ("cuda", "cpu"))
    losses = {}
    for name, settings in {"budget": {"micro_batch_tokens": 64}, "rows": {"eval_batch_size": 1}}.items():
        result = Trainer(config(max_steps=1, eval_at_start=False, **settings), output_dir=tmp_path / name,
                         collate_fn=PackedCollator()).fit(qlora_model(tiny_llama_dir), rows, eval_rows)  # fmt: skip
        losses[name] = result.eval_loss
    budgeted, by_rows = passes_seen
    assert by_rows is None  # eval_batch_size given: one row per pass
    assert sorted(i for p in budgeted for i in p) == list(range(12))  # every row once
    assert 1 < len(budgeted) < 8  # 12 rows of 6-24 tokens in passes of <= 64 tokens
    assert all(sum(len(eval_rows[i]["input_ids"]) for i in p) <= 256 for p in budgeted)
    assert losses["budget"] == pytest.approx(losses["rows"], rel=1e-5)
