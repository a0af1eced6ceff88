"""`train.cuda_graphs` without a GPU: what decides to record, replay or run eagerly (the recording itself,
torch.cuda.make_graphed_callables, is replaced by one that runs the same surfaces eagerly; the real one
runs in tests/gpu/test_gpu_layer_graphs.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from qlora_kit.cli import main
from qlora_kit.testing import make_tiny_llama
from qlora_kit.training import layer_graphs, speedups
from qlora_kit.training.layer_graphs import LayerGraphs, split_call


@pytest.fixture
def fake_recording(monkeypatch):
    """make_graphed_callables as eager calls of its surfaces; records what it was asked to record."""

    class Asked(list):
        samples: list = []  # the sample tensors of every recording, in order

    asked = Asked()

    def fake(surfaces, samples, **kwargs):
        asked.append([tuple(t.shape for t in sample) for sample in samples])
        asked.samples.extend(samples)
        return tuple(surfaces)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(
        layer_graphs, "_recording_autocast", lambda device_type: torch.autocast("cpu", enabled=False)
    )
    return asked


def _train_step(model, ids):
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_one_recording_per_pass_shape_and_the_same_numbers(tokenizer, fake_recording):
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    short, long = torch.arange(1, 9)[None], torch.arange(1, 17)[None]
    order = (short, long, short, long, short)
    expected = [_train_step(model, ids) for ids in order]
    graphs = LayerGraphs(model.model.layers)
    got = [_train_step(model, ids) for ids in order]
    # both layers, once per shape (8, then 16 tokens), at each shape's second pass (the first runs eagerly)
    assert [len(a) for a in fake_recording] == [2, 2]
    assert fake_recording[0][0][0] == (1, 8, 64) and fake_recording[1][0][0] == (1, 16, 64)
    assert graphs.replays == 3 and len(graphs.recordings) == 2 and graphs.mismatches == 0
    for (loss, grads), (ref_loss, ref_grads) in zip(got, expected, strict=True):
        assert loss == pytest.approx(ref_loss)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r)
    with torch.no_grad():
        model(input_ids=short, use_cache=False)
    assert graphs.replays == 3  # evaluation runs the layers eagerly
    graphs.remove()
    assert "forward" not in vars(model.model.layers[0])  # the layer's own forward again


def test_a_failed_recording_runs_that_shape_eagerly_and_says_so(tokenizer, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", broken)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(
        layer_graphs, "_recording_autocast", lambda device_type: torch.autocast("cpu", enabled=False)
    )
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    graphs = LayerGraphs(model.model.layers)
    ids = torch.arange(1, 9)[None]
    with caplog.at_level(logging.WARNING, logger="qlora_kit.training.layer_graphs"):
        _train_step(model, ids)
        _train_step(model, ids)
    assert graphs.replays == 0 and len(graphs.failed) == 1
    assert [r.getMessage() for r in caplog.records].count(
        "cuda_graphs: recording a pass shape failed, it runs eagerly "
        "(RuntimeError: operation not permitted when stream is capturing)"
    ) == 1  # once per shape, not per pass


def test_at_most_max_signatures_shapes_are_recorded(tokenizer, fake_recording):
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=1)
    graphs = LayerGraphs(model.model.layers, max_signatures=2)
    for n in (4, 8, 4, 8, 12, 12, 4):
        _train_step(model, torch.arange(1, n + 1)[None])
    assert len(fake_recording) == 2 and graphs.replays == 3  # 12 tokens ran eagerly; 4 replayed again


def test_split_call_puts_tensors_back_and_refuses_other_objects():
    x, mask = torch.ones(2, 3), torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    call = split_call((x,), {"attention_mask": mask, "position_embeddings": (x, x), "use_cache": False})
    assert len(call.tensors) == 4
    args, kwargs = call.rebuild([t + 1 for t in call.tensors])
    assert torch.equal(args[0], x + 1) and kwargs["use_cache"] is False
    assert split_call((x,), {"cache": object()}) is None  # e.g. a DynamicCache: run eagerly
    other = split_call((x[:1],), {"attention_mask": mask, "position_embeddings": (x, x), "use_cache": False})
    assert other.signature != call.signature


def test_cuda_graphs_on_the_cpu_trains_eagerly_and_says_why(tiny_run_config, capsys):
    assert main(["train", str(tiny_run_config(max_steps=1)), "train.cuda_graphs=true"]) == 0
    assert "train.cuda_graphs: off: CUDA only (this run is on cpu)" in capsys.readouterr().err


def test_cuda_graphs_auto_on_the_cpu_trains_eagerly_without_a_warning(tiny_run_config, tmp_path, capsys):
    """`auto` (what seed_improved.yaml asks) is off on the CPU with an info line, not a warning."""
    assert main(["train", str(tiny_run_config(max_steps=1)), "train.cuda_graphs=auto"]) == 0
    err = capsys.readouterr().err
    assert "warning: train.cuda_graphs" not in err
    assert "train.cuda_graphs: off: CUDA only (this run is on cpu)" in err


def _train_section(**settings):
    from qlora_kit.config import TrainConfig

    return TrainConfig(**settings)


@pytest.mark.parametrize(
    ("settings", "compiled_layers", "recorder"),
    [
        ({"cuda_graphs": True}, 0, True),  # compile auto yields: the eager layers are recorded
        ({"cuda_graphs": True, "compile": True}, 2, False),  # compiled layers are not recorded
        ({"compile": "auto"}, None, False),  # auto decides alone (no recorder)
    ],
)
def test_speed_up_layers_lets_cuda_graphs_keep_the_layers_eager(tokenizer, monkeypatch, settings, compiled_layers,
                                                               recorder):  # fmt: skip
    """On a (pretend) CUDA device: what `train.compile` and `train.cuda_graphs` together do to the layers."""
    asked = []
    monkeypatch.setattr(speedups, "compile_if_wanted",
                        lambda model, setting, device, offloading: asked.append(setting) or (2 if setting else 0))  # fmt: skip
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    marks, graphs = speedups.speed_up_layers(model, _train_section(**settings), torch.device("cuda"), False)
    assert asked == [False if compiled_layers == 0 else settings.get("compile", "auto")]
    assert marks is False and (graphs is not None) is recorder
    if graphs is not None:
        graphs.remove()


def test_checkpointed_layers_are_named_as_running_eagerly(tokenizer, caplog):
    from qlora_kit.model.prepare import set_grad_checkpointing

    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=2)
    set_grad_checkpointing(model, True, first_layers=1)
    with caplog.at_level(logging.WARNING, logger="qlora_kit.training.speedups"):
        graphs = speedups.graph_layers_if_wanted(model, True, torch.device("cuda"), compiled=False)
    assert "train.cuda_graphs: 1 of 2 decoder layers are checkpointed and run eagerly" in caplog.text
    graphs.remove()


def test_with_the_first_layers_checkpointed_the_others_are_recorded(tokenizer, fake_recording):
    """The planner checkpoints the first layers when memory is short: those run eagerly, the pass's
    recording is chosen at the first layer that is not checkpointed, and the numbers stay eager's."""
    from qlora_kit.model.prepare import set_grad_checkpointing

    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=3)
    set_grad_checkpointing(model, True, first_layers=1)
    ids = torch.arange(1, 9)[None]
    expected = [_train_step(model, ids) for _ in range(3)]
    graphs = LayerGraphs(model.model.layers)
    got = [_train_step(model, ids) for _ in range(3)]
    assert [len(asked) for asked in fake_recording] == [2]  # layers 1 and 2, once
    assert graphs.replays == 2
    for (loss, grads), (ref_loss, ref_grads) in zip(got, expected, strict=True):
        assert loss == pytest.approx(ref_loss)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r)
    graphs.remove()


def test_the_cli_fills_packed_passes_to_quarters_of_the_budget_and_records_the_widths_that_recur(
    tiny_run_config, fake_recording, monkeypatch, caplog
):
    """`qlora-kit train` with train.cuda_graphs and a token budget (on a pretend CUDA device): every packed
    pass is filled to a quarter of the budget, a quarter the run meets fewer than MIN_RECORDED_PASSES times
    is filled to the next one (but the widest), and each common quarter is recorded once."""
    from qlora_kit.training import session, speedups
    from qlora_kit.training.layer_graphs import MIN_RECORDED_PASSES

    real = session.speed_up_layers
    monkeypatch.setattr(session, "speed_up_layers",
                        lambda model, cfg, device, offloading: real(model, cfg, torch.device("cuda"), offloading))  # fmt: skip
    counted = []
    monkeypatch.setattr(speedups, "recurring_widths", lambda counts: counted.append(counts) or layer_graphs.recurring_widths(counts))  # fmt: skip
    cfg = tiny_run_config(max_steps=30, micro_batch_size=2, grad_accum=2)
    with caplog.at_level("INFO", logger="qlora_kit.training.layer_graphs"):
        assert main(["train", str(cfg), "train.cuda_graphs=true", "train.micro_batch_tokens=512",
                     "data.packing=true", "train.grad_checkpointing=false"]) == 0  # fmt: skip
    (counts,) = counted
    assert sum(counts.values()) >= 30 and set(counts) <= {
        128,
        256,
        384,
        512,
    }  # a pass or two a step, in quarters
    widths = [recording[0][0][1] for recording in fake_recording]
    # once each, only frequent widths (one met only as a step's second pass is never recorded: see _accumulating)
    assert len(set(widths)) == len(widths) and set(widths) <= {
        w for w, n in counts.items() if n >= MIN_RECORDED_PASSES
    }
    assert max(counts, key=counts.get) in widths, counts
    # this run met 256 twice (below): its passes were filled to 512 instead
    assert all(n >= MIN_RECORDED_PASSES or w == 512 for w, n in counts.items()), counts
    if counts.get(512, MIN_RECORDED_PASSES) < MIN_RECORDED_PASSES:
        assert "too rare in this run to record" in caplog.text


def test_recurring_widths_keeps_one_row_passes_of_rare_widths_eager():
    from qlora_kit.training.layer_graphs import MIN_RECORDED_PASSES, recurring_widths

    worth = recurring_widths({960: 2, 2752: 165, 3604: MIN_RECORDED_PASSES})
    assert not worth(torch.zeros(1, 960, 8))
    assert worth(torch.zeros(1, 2752, 8)) and worth(torch.zeros(1, 3604, 8))
    assert worth(torch.zeros(1, 1000, 8))  # a width the plan did not count: recorded as before
    assert worth(torch.zeros(2, 960, 8))  # padded passes of several rows: not counted


class _Upcast(torch.nn.Module):
    """A layer whose output dtype differs from its input's (GPT-2's first layer under autocast: bf16
    embeddings in, float32 hidden states out)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((4,), 2.0))

    def forward(self, hidden):
        return hidden.float() * self.weight


def test_layers_are_recorded_at_a_steps_first_pass_with_the_inputs_the_eager_pass_showed(fake_recording):
    layers = torch.nn.ModuleList([_Upcast(), _Upcast()]).train()
    graphs = LayerGraphs(layers)

    def step(passes):
        layers.zero_grad(set_to_none=True)
        for _ in range(passes):
            hidden = torch.ones(1, 3, 4, dtype=torch.bfloat16)
            for layer in layers:
                hidden = layer(hidden)
            hidden.sum().backward()

    step(passes=2)  # the first pass eager (it shows the inputs); the second holds gradients: not recorded
    assert fake_recording == [] and graphs.replays == 0
    step(passes=1)  # a step's first pass: recorded and replayed
    assert graphs.replays == 1 and graphs.mismatches == 0
    assert [s[0].dtype for s in fake_recording.samples] == [torch.bfloat16, torch.float32]
    assert [s[0].requires_grad for s in fake_recording.samples] == [False, True]
    torch.testing.assert_close(layers[0].weight.grad, torch.full((4,), 2 * 3.0))  # d/dw0 of sum(w0 w1)


def test_gradient_copy_hooks_are_idle_while_recording(tokenizer, fake_recording, monkeypatch):
    """A parameter hook's copy would run on its AccumulateGrad node's stream, not the capture's: the hooks
    return the gradient as it is while recording, and copy again after."""
    from qlora_kit.training.compiling import GradientCopies

    seen = []
    recording = torch.cuda.make_graphed_callables  # the fixture's stand-in
    monkeypatch.setattr(torch.cuda, "make_graphed_callables",
                        lambda *a, **k: seen.append(GradientCopies.several_passes) or recording(*a, **k))  # fmt: skip
    monkeypatch.setattr(GradientCopies, "several_passes", True)  # a step of several passes
    model = make_tiny_llama(tokenizer=tokenizer, num_hidden_layers=1)
    graphs = LayerGraphs(model.model.layers)
    for _ in range(2):
        _train_step(model, torch.arange(1, 9)[None])
    assert seen == [False] and GradientCopies.several_passes is True and graphs.replays == 1
