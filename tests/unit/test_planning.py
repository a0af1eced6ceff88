"""The planner against what can be measured on a CPU (tiny models) and the H200 numbers of BENCHMARKS.md."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from peft.helpers import disable_input_dtype_casting
from transformers import LlamaConfig

from qlora_kit.config import ModelConfig, RunConfig
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.lora_dropout import LightDropoutLinear
from qlora_kit.model.quant import Bnb4bit, NoQuant
from qlora_kit.planning import Settings, choose_settings, estimate_memory, model_shape, plan_run
from qlora_kit.planning.from_config import adapter_of
from qlora_kit.planning.memory import (
    Adapter,
    adapter_bytes,
    layer_saved_per_token,
    outside_saved_per_token,
    weight_bytes,
)
from qlora_kit.planning.shape import load_model_config
from qlora_kit.planning.speed import estimate_speed
from qlora_kit.testing import make_tiny_llama
from qlora_kit.training.offload import enable_offloaded_checkpointing

BF16 = "bfloat16"  # what the planner counts (2 bytes); `auto` on a CPU without bf16 loads float32

TINY = dict(hidden_size=96, intermediate_size=200, num_attention_heads=4, num_key_value_heads=2)
LLAMA_8B = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=131072,
)  # fmt: skip
LLAMA_1B = dict(
    hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
    intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072,
)  # fmt: skip


def _tiny_dir(tmp_path_factory, tokenizer, name="tiny", **overrides):
    path = tmp_path_factory.mktemp(name)
    make_tiny_llama(path, tokenizer, **{**TINY, **overrides})
    return path


def _shape(path):
    return model_shape(load_model_config(str(path)))


def _storage_bytes(tensors) -> int:
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None
    }
    return sum(storages.values())


def _quant_state_tensors(model):
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            yield from (state.absmax, state.code, getattr(state, "offset", None))
            if state.state2 is not None:
                yield from (state.state2.absmax, state.state2.code)


# ------------------------------------------------------------------------------------ weights


@pytest.mark.parametrize(
    "quant",
    [
        Bnb4bit.Config(double_quant=True, compute_dtype=BF16),
        Bnb4bit.Config(double_quant=False, compute_dtype=BF16),
        NoQuant.Config(compute_dtype=BF16),
    ],  # the planner's 2-byte model, as on a GPU
)
def test_weight_bytes_equal_a_real_load_on_cpu(tmp_path_factory, tokenizer, quant):
    path = _tiny_dir(tmp_path_factory, tokenizer)
    model, _ = ModelLoader(ModelConfig(name_or_path=str(path)), quant, "cpu").load()
    measured = _storage_bytes([*model.parameters(), *model.buffers(), *_quant_state_tensors(model)])
    predicted = weight_bytes(_shape(path), quant.kind, getattr(quant, "double_quant", False), 2)
    assert sum(predicted.values()) == measured


def test_tied_embeddings_are_counted_once(tmp_path_factory, tokenizer):
    path = _tiny_dir(tmp_path_factory, tokenizer, tie_word_embeddings=True)
    model, _ = ModelLoader(
        ModelConfig(name_or_path=str(path)), Bnb4bit.Config(compute_dtype=BF16), "cpu"
    ).load()
    measured = _storage_bytes([*model.parameters(), *model.buffers(), *_quant_state_tensors(model)])
    assert sum(weight_bytes(_shape(path), "bnb_4bit", True, 2).values()) == measured


# ------------------------------------------------------------------------------------ adapter


@pytest.mark.parametrize("optimizer", ["adamw_torch", "paged_adamw_8bit"])
def test_adapter_and_optimizer_bytes_equal_a_real_step(tmp_path_factory, tokenizer, optimizer):
    from qlora_kit.config import RunConfig

    # r=48 on a 96-wide model: some LoRA tensors reach bitsandbytes' 4096-element 8-bit threshold, some not
    path = _tiny_dir(tmp_path_factory, tokenizer)
    model, _ = ModelLoader(
        ModelConfig(name_or_path=str(path)), Bnb4bit.Config(compute_dtype=BF16), "cpu"
    ).load()
    model = AdapterBuilder(AdapterBuilder.Config(r=48, alpha=16)).apply(model)
    opt_cfg = RunConfig.model_validate({"train": {"optimizer": {"kind": optimizer}}}).train.optimizer
    opt = opt_cfg.build().create(model)
    ids = torch.randint(0, 300, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = [  # bitsandbytes' quantization maps (qmap1/2) are shared by every tensor: not per parameter
        t
        for s in opt.state.values()
        for k, t in s.items()
        if torch.is_tensor(t) and t.dim() and "qmap" not in k
    ]
    parts, paged = adapter_bytes(_shape(path), Adapter(r=48, optimizer=optimizer), 2)
    assert parts["adapter params + grads"] == _storage_bytes(trainable) + _storage_bytes(
        p.grad for p in trainable
    )
    assert parts["optimizer state"] + paged == _storage_bytes(state)  # paging does not exist on a CPU


# -------------------------------------------------------------------------------- activations


def _saved_bytes(model, tokens: int) -> int:
    """Bytes of the distinct storages autograd saves in a forward pass (parameters aside)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return x

    ids = torch.randint(0, 300, (1, tokens))
    # PEFT casts LoRA inputs to fp32 unless torch.is_autocast_enabled(), which only looks at CUDA's
    # autocast; switching the cast off gives on the CPU the path a CUDA autocast run takes.
    casting_off = disable_input_dtype_casting(model)
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x)
    with casting_off, torch.autocast("cpu", dtype=torch.bfloat16), hooks:
        model(input_ids=ids)
    return sum(seen.values())


def _lora_model(path, adapter: AdapterBuilder.Config, light: bool = True):
    """With ``light``, the light dropout runs on the CPU too (tests that use it enable the CPU on
    ``LightDropoutLinear.devices``)."""
    model, _ = ModelLoader(
        ModelConfig(name_or_path=str(path)), Bnb4bit.Config(compute_dtype=BF16), "cpu"
    ).load()
    prepare_for_training(model, grad_checkpointing=False)
    model.enable_input_require_grads()  # layer 0 then saves what every other layer saves
    if light:
        return AdapterBuilder(adapter).apply(model).train()
    from peft import get_peft_model  # PEFT's own dropout modules, as compiled layers run them

    return get_peft_model(model, AdapterBuilder(adapter).lora_config(model)).train()


@pytest.mark.parametrize(
    ("dims", "adapter", "light"),
    [
        ({}, AdapterBuilder.Config(r=4, dropout=0.05), True),
        ({}, AdapterBuilder.Config(r=4, dropout=0.05), False),
        ({}, AdapterBuilder.Config(r=4, dropout=0.0), True),
        ({"intermediate_size": 320, "num_key_value_heads": 1}, AdapterBuilder.Config(r=8, dropout=0.0), True),
        ({"num_attention_heads": 6, "num_key_value_heads": 3}, AdapterBuilder.Config(r=8, dropout=0.1), True),
        (
            {"num_attention_heads": 6, "num_key_value_heads": 3},
            AdapterBuilder.Config(r=8, dropout=0.1),
            False,
        ),
        ({}, AdapterBuilder.Config(r=4, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]), True),
    ],
)
def test_saved_bytes_per_token_equal_saved_tensor_hooks(
    tmp_path_factory, tokenizer, dims, adapter, light, monkeypatch
):
    from qlora_kit.model import lora_dropout
    from qlora_kit.model.lora_dropout import LightDropoutLinear

    monkeypatch.setattr(LightDropoutLinear, "devices", ("cuda", "cpu"))  # its bytes, measured on the CPU
    monkeypatch.setattr(lora_dropout, "LIGHT_MIN_HIDDEN", 0)  # of a tiny model
    one = _tiny_dir(tmp_path_factory, tokenizer, "one", num_hidden_layers=1, **dims)
    two = _tiny_dir(tmp_path_factory, tokenizer, "two", num_hidden_layers=2, **dims)
    m1, m2 = _lora_model(one, adapter, light), _lora_model(two, adapter, light)
    s = {(t, n): _saved_bytes(m, t) for t in (32, 64) for n, m in ((1, m1), (2, m2))}
    per_layer = (s[64, 2] - s[64, 1] - s[32, 2] + s[32, 1]) / 32
    outside = (s[64, 1] - s[32, 1]) / 32 - per_layer
    shape = _shape(two)
    planned = Adapter(r=adapter.r, dropout=adapter.dropout, target_modules=adapter.target_modules,
                      light_dropout=light)  # fmt: skip
    # CPU dropout keeps its mask in the input's dtype (2 B); CUDA's fused dropout keeps a bool mask (1 B)
    assert per_layer == layer_saved_per_token(shape, planned, act_bytes=2, mask_bytes=2)
    assert outside == outside_saved_per_token(shape, act_bytes=2)


def test_offloaded_bytes_equal_the_planned_host_bytes(tmp_path_factory, tokenizer):
    path = _tiny_dir(tmp_path_factory, tokenizer, num_hidden_layers=3)
    model, _ = ModelLoader(
        ModelConfig(name_or_path=str(path)), Bnb4bit.Config(compute_dtype=BF16), "cpu"
    ).load()
    prepare_for_training(model, grad_checkpointing=True)  # no input grads: every layer's input is offloaded
    model = AdapterBuilder(AdapterBuilder.Config(r=4)).apply(model).train()
    handle = enable_offloaded_checkpointing(model, min_bytes=0)
    ids = torch.randint(0, 300, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    plan = estimate_memory(_shape(path), Bnb4bit.Config(), Adapter(r=4), Settings(True, True), 80)
    assert handle.offloader.pending_bytes() == plan.host_bytes
    loss.backward()


# --------------------------------------------------------------------------------- the plans


def _cfg(path, rows: int, seq: int, **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"name_or_path": str(path)},
            "quant": {
                "kind": "bnb_4bit",
                "quant_type": "nf4",
                "double_quant": True,
                "compute_dtype": "bfloat16",
            },
            "adapter": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "data": {"max_length": seq},
            "train": {
                "micro_batch_size": rows,
                "optimizer": {"kind": "paged_adamw_8bit"},
                "loss": "standard",
                "grad_checkpointing": True,
                "activation_offload": False,
                **train,
            },
        }
    )


@pytest.fixture(scope="module")
def llama_8b(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-8b")
    LlamaConfig(**LLAMA_8B).save_pretrained(path)
    return path, _shape(path)


@pytest.fixture(scope="module")
def llama_1b(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-1b")
    LlamaConfig(**LLAMA_1B).save_pretrained(path)
    return path, _shape(path)


# One H200, NF4 + double quant, r16 all-linear, paged AdamW 8-bit, dropout 0.05: (model, rows, seq,
# checkpointing, compiled, peak GiB allocated, tokens/s). Eager: BENCHMARKS.md, the OLD code (standard
# loss, no offload). Compiled: benchmarks/results.jsonl, run 2026-11-30j (fused loss).
MEASURED = [
    ("8b", 2, 2048, True, False, 12.5, 6157),
    ("8b", 2, 2048, False, False, 42.8, 9371),
    ("1b", 4, 2048, True, False, 13.4, 28882),
    ("1b", 4, 2048, False, False, 29.6, 38678),
    ("8b", 2, 2048, False, True, 31.8, 12035),
    ("8b", 2, 2048, True, True, 7.8, 8212),
    ("1b", 4, 2048, False, True, 15.3, 46022),
]


@pytest.mark.parametrize(
    ("model", "rows", "seq", "checkpointing", "compiled", "peak_gib", "tokens_per_s"), MEASURED
)
def test_plans_are_within_15_percent_of_h200_measurements(
    llama_8b, llama_1b, model, rows, seq, checkpointing, compiled, peak_gib, tokens_per_s
):
    path, shape = llama_8b if model == "8b" else llama_1b
    loss = {"kind": "fused" if compiled else "standard"}  # the compiled runs' `auto` loss on CUDA
    cfg = _cfg(path, rows, seq, grad_checkpointing=checkpointing, compile=compiled, loss=loss)
    plan = plan_run(cfg, shape=shape, adapter=replace(adapter_of(cfg), light_dropout=False))  # measured so
    assert plan.memory.peak_allocated / 2**30 == pytest.approx(peak_gib, rel=0.15)
    assert plan.speed.tokens_per_s == pytest.approx(tokens_per_s, rel=0.15)


# W3 rows of run 2026-11-30m (one H200, benchmarks/results.jsonl): one row of ``seq`` tokens, dropout 0, every
# layer checkpointed, `train.compile: auto` (on without offload), fused loss, cuDNN attention (long plain
# rows): (seq, offload, peak GiB allocated, seconds per step).
W3_MEASURED = [(65536, False, 38.9, 14.171), (65536, True, 21.5, 15.801),
               (262144, True, 68.9, 186.848), (393216, True, 100.5, 386.099)]  # fmt: skip


@pytest.mark.parametrize(("seq", "offload", "peak_gib", "step_s"), W3_MEASURED)
def test_long_row_plans_are_near_h200_measurements(llama_8b, seq, offload, peak_gib, step_s):
    path, shape = llama_8b
    cfg = _cfg(path, 1, seq, activation_offload=offload, loss={"kind": "fused"})
    cfg = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"dropout": 0.0})})
    plan = plan_run(cfg, shape=shape)
    assert plan.memory.peak_allocated / 2**30 == pytest.approx(peak_gib, rel=0.15)
    # Time: at 262k and 393k, where attention is most of the step, the plan is within 1%. At 65,536 tokens
    # it is 21% slow: the compiled layers' matmuls ran at about 0.7 of peak there, against the 0.466 fitted
    # at 4,096 tokens per pass (speed.COMPILED_EFFICIENCY); one point, so the fit is left as it is.
    assert plan.speed.step_seconds == pytest.approx(step_s, rel=0.25 if seq == 65536 else 0.05)


def test_partial_offload_plan_is_near_the_h200_measurement(llama_8b):
    # run 2026-11-30n: 262,144 tokens, the Trainer's auto chose 9 of 32 layers offloaded; 112.7 GiB, 188.4 s
    path, shape = llama_8b
    cfg = _cfg(path, 1, 262144, activation_offload="auto", loss={"kind": "fused"})
    cfg = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"dropout": 0.0})})
    plan = plan_run(cfg, shape=shape, settings=Settings(True, True, "fused", compiled=True, offload_layers=9))
    assert plan.memory.peak_allocated / 2**30 == pytest.approx(112.7, rel=0.15)
    assert plan.speed.step_seconds == pytest.approx(188.363, rel=0.05)
    assert plan.memory.host_bytes == 9 * 262144 * 4096 * 2


def test_memory_grows_with_tokens_and_checkpointing_and_offload_cut_activations(llama_8b):
    path, shape = llama_8b
    cfg = _cfg(path, 1, 4096)
    adapter = Adapter(r=16, optimizer="paged_adamw_8bit")

    def kept(settings, tokens):
        plan = estimate_memory(shape, cfg.quant, adapter, settings, tokens)
        return plan.components["activations kept for backward"], plan.peak_allocated

    for settings in (Settings(False), Settings(True), Settings(True, True), Settings(True, True, "chunked")):
        peaks = [kept(settings, t)[1] for t in (1024, 4096, 16384, 65536)]
        assert peaks == sorted(peaks) and len(set(peaks)) == 4
    none, ckpt, offload = (kept(s, 16384)[0] for s in (Settings(False), Settings(True), Settings(True, True)))
    assert offload < ckpt < none / 10


def test_choose_settings_picks_the_cheapest_that_fits(llama_8b):
    path, shape = llama_8b

    def choose(seq, loss="standard"):
        cfg = _cfg(path, 1, seq, grad_checkpointing="auto", activation_offload="auto")
        plan = choose_settings(cfg, gpu_memory_gib=139.8, shape=shape, loss=loss)
        return plan.settings.grad_checkpointing, plan.settings.activation_offload, plan.verdict

    assert choose(4096) == (False, False, "fits")
    assert choose(65536) == (True, False, "fits")
    assert choose(131072, "chunked") == (True, False, "fits")
    assert choose(262144, "chunked") == (True, True, "fits")
    assert choose(2_000_000, "chunked") == (True, True, "does not fit")


def test_max_tokens_is_the_budget_that_fits(llama_8b):
    path, shape = llama_8b
    plan = plan_run(_cfg(path, 1, 2048), gpu_memory_gib=139.8, shape=shape)
    assert 60_000 < plan.max_tokens < 72_000  # measured: 69,632 trained, 73,728 did not
    at_budget = plan_run(_cfg(path, 1, plan.max_tokens), gpu_memory_gib=139.8, shape=shape)
    above = plan_run(_cfg(path, 1, plan.max_tokens + 64), gpu_memory_gib=139.8, shape=shape)
    assert (at_budget.verdict, above.verdict) == ("fits", "tight")


def test_plan_text_and_json(llama_8b):
    path, shape = llama_8b
    plan = plan_run(_cfg(path, 2, 2048), gpu_memory_gib=80, shape=shape)
    data = json.loads(plan.to_json())
    assert data["verdict"] == "fits" and data["tokens"] == 4096
    assert sum(data["components_gib"].values()) == pytest.approx(data["peak_allocated_gib"], abs=0.01)
    text = plan.to_text()
    assert "quantization constants" in text and "of 80.0 GiB: fits" in text


def test_plan_command_prints_the_table_the_verdict_and_the_settings(llama_8b, tmp_path, capsys):
    import json

    import yaml

    from qlora_kit.cli import main

    path, _ = llama_8b
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(path)}, "data": {"max_length": 2048},
                                   "train": {"micro_batch_size": 2}}))  # fmt: skip
    assert main(["plan", str(cfg), "--gpu-memory", "139.8"]) == 0
    out = capsys.readouterr().out
    assert "of 139.8 GiB: fits" in out and "settings: train.grad_checkpointing=false" in out
    assert main(["plan", str(cfg), "--gpu-memory", "16", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["settings"]["grad_checkpointing"] is True  # 16 GiB needs recomputation at 4,096 tokens
    k = plan["settings"]["checkpoint_layers"]  # of some layers: what `auto` would do
    assert main(["plan", str(cfg), "--gpu-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert (
        f"checkpointing on for {k} of 32 layers" in out and "settings: train.grad_checkpointing=auto" in out
    )
    assert "bound by the host" not in out  # 4,096 tokens per pass keep the device the bottleneck
    assert main(["plan", str(cfg), "train.micro_batch_size=1", "--gpu-memory", "139.8"]) == 0
    assert "bound by the host's work per pass" in capsys.readouterr().out  # 2,048 do not (run 2026-11-30o)


def test_a_memory_budget_caps_what_the_plan_may_use(llama_8b, tmp_path, capsys):
    """`train.memory_budget_gib` below the device's memory: the plan (CLI) takes the lean settings and
    judges against the budget; without it, the same GPU runs without recomputation."""
    import yaml

    from qlora_kit.cli import main

    path, _ = llama_8b
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(path)}, "data": {"max_length": 2048},
                                   "train": {"micro_batch_size": 2}}))  # fmt: skip
    assert main(["plan", str(cfg), "train.memory_budget_gib=16", "--gpu-memory", "139.8", "--json"]) == 0
    lean = json.loads(capsys.readouterr().out)
    assert lean["gpu_memory_gib"] == 16 and lean["settings"]["grad_checkpointing"] is True
    assert lean["verdict"] == "fits" and lean["needed_gib"] < 0.9 * 16
    assert main(["plan", str(cfg), "train.memory_budget_gib=200", "--gpu-memory", "139.8", "--json"]) == 0
    roomy = json.loads(capsys.readouterr().out)  # a budget above the device's memory changes nothing
    assert roomy["gpu_memory_gib"] == 139.8 and roomy["settings"]["grad_checkpointing"] is False


def test_compiled_layers_plan_less_memory_and_more_speed_and_not_under_offload(llama_8b):
    path, shape = llama_8b
    adapter = Adapter(r=16, optimizer="paged_adamw_8bit")

    def plan(light=True, in_compiled=False, **settings):
        s = Settings(**settings)
        chosen = replace(adapter, light_dropout=light, light_in_compiled=in_compiled)
        memory = estimate_memory(shape, _cfg(path, 2, 2048).quant, chosen, s, 4096)
        return memory.components["activations kept for backward"], estimate_speed(
            shape, adapter, s, 4096, 2048
        )

    (eager, eager_speed), (compiled, compiled_speed) = (
        plan(grad_checkpointing=False, compiled=c, light=False) for c in (False, True)
    )
    assert eager - compiled == 32 * 4096 * 2 * (14336 + 2 * 4096)  # a(I + 2h) per token and layer
    # compiled layers run PEFT's dropout whatever the adapter says; eager ones the light dropout
    assert plan(grad_checkpointing=False, compiled=True)[0] == compiled
    # unless the light dropout runs in compiled layers too (LightDropoutLinear.in_compiled, hashed masks):
    # no dropped copies, and the LoRA inputs kept only by the dropped regions, a(h + h + I) B/token/layer:
    # 14.25 GiB less, as measured (18.0 against 31.9 GiB, H200 call 55a)
    light_compiled = plan(grad_checkpointing=False, compiled=True, in_compiled=True)[0]
    assert compiled - light_compiled == 32 * 4096 * (256360 - 184680 + 2 * (4096 + 4096 + 14336))
    light = plan(grad_checkpointing=False)[0]
    assert eager - light == 32 * 4096 * (256360 - 184680)  # the module docstring's two per-layer figures
    assert compiled_speed.tokens_per_s > 1.2 * eager_speed.tokens_per_s  # the measured efficiencies
    offloaded = dict(grad_checkpointing=True, activation_offload=True)
    assert plan(**offloaded, compiled=True)[0] == plan(**offloaded)[0]  # compile is skipped under offload
    assert not Settings(True, True, compiled=True).compiles


def test_plans_from_a_config_compile_as_train_compile_resolves_on_a_gpu(llama_8b, tiny_llama_dir):
    path, _ = llama_8b
    assert plan_run(_cfg(path, 2, 2048), gpu_memory_gib=139.8).settings.compiled  # auto, 4096 wide
    assert not plan_run(_cfg(path, 2, 2048, compile=False), gpu_memory_gib=139.8).settings.compiled
    assert not plan_run(_cfg(tiny_llama_dir, 2, 64), gpu_memory_gib=80).settings.compiled  # too narrow


def test_auto_checkpointing_under_a_budget_checkpoints_the_fewest_layers_that_fit(llama_8b):
    path, shape = llama_8b

    def plan(budget, checkpointing="auto", **settings):
        cfg = _cfg(path, 2, 2048, grad_checkpointing=checkpointing, memory_budget_gib=budget)
        if settings:
            return plan_run(cfg, gpu_memory_gib=139.8, shape=shape, settings=Settings(**settings))
        return choose_settings(cfg, gpu_memory_gib=139.8, shape=shape, loss="fused")

    chosen = plan(16)
    k = chosen.settings.checkpoint_layers
    assert (
        chosen.verdict == "fits" and 0 < k < 32 and chosen.settings.describe(32) == f"on for {k} of 32 layers"
    )
    fewer = plan(16, grad_checkpointing=True, checkpoint_layers=k - 1, loss="fused", compiled=True)
    assert fewer.verdict != "fits"  # one layer fewer does not fit: k is the fewest
    every = plan(16, grad_checkpointing=True, loss="fused", compiled=True)
    assert every.memory.peak_allocated < chosen.memory.peak_allocated < plan(None).memory.peak_allocated
    assert every.speed.tokens_per_s < chosen.speed.tokens_per_s < plan(None).speed.tokens_per_s
    assert plan(16, checkpointing=True).settings.checkpoint_layers is None  # explicit: every layer
    assert plan(None).settings.grad_checkpointing is False  # fits without: none


@pytest.mark.parametrize(
    ("checkpointing", "layers", "turn_on"), [(False, None, True), (True, 26, True), (True, None, False)]
)
def test_a_first_step_near_the_limit_turns_checkpointing_on_for_every_layer(
    monkeypatch, checkpointing, layers, turn_on
):
    from qlora_kit.planning.live import MemoryDecision, check_first_step

    estimate = estimate_memory(model_shape(LlamaConfig(**TINY)), Bnb4bit.Config(), Adapter(), Settings(), 64)
    decision = MemoryDecision(
        Settings(checkpointing, False, checkpoint_layers=layers), 64, estimate, capacity=100
    )
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 95)  # within the 10% margin
    assert check_first_step(decision, torch.device("cuda")) is turn_on
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 50)
    assert check_first_step(decision, torch.device("cuda")) is False


def test_layouts_offer_some_layers_only_for_auto_knobs():
    from qlora_kit.planning.settings import layouts

    assert layouts("auto", "auto") == [(False, False, False), (True, False, True), (True, False, False),
                                       (True, True, True), (True, True, False)]  # fmt: skip
    assert layouts(True, "auto") == [(True, False, False), (True, True, True), (True, True, False)]
    assert layouts("auto", True) == [(True, True, False)]  # explicit offload: every layer
    assert layouts("auto", False) == [(False, False, False), (True, False, True), (True, False, False)]


def test_auto_offload_offloads_the_fewest_layers_that_fit(llama_8b, tmp_path, capsys):
    import yaml

    from qlora_kit.cli import main

    path, shape = llama_8b
    seq = 262144
    cfg = _cfg(path, 1, seq, grad_checkpointing="auto", activation_offload="auto", loss={"kind": "fused"})
    chosen = choose_settings(cfg, gpu_memory_gib=139.8, shape=shape)
    s = chosen.settings
    m = s.offload_layers
    assert chosen.verdict == "fits" and s.checkpointed(32) == 32 and 0 < m < 32
    assert s.describe_offload(32) == f"on for {m} of 32 layers"
    assert chosen.memory.host_bytes == m * seq * 4096 * 2  # the offloaded layers' bf16 inputs

    def plan(**settings):
        return plan_run(
            cfg, gpu_memory_gib=139.8, shape=shape, settings=Settings(True, True, "fused", **settings)
        )

    assert plan(offload_layers=m - 1).verdict != "fits"  # one layer fewer does not fit: m is the fewest
    every = plan()
    assert every.memory.host_bytes == 32 * seq * 4096 * 2 > chosen.memory.host_bytes
    assert every.memory.peak_allocated < chosen.memory.peak_allocated
    # through the CLI: the table says so and the proposal keeps `auto`
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {"name_or_path": str(path)}, "data": {"max_length": seq},
                                   "train": {"micro_batch_size": 1, "loss": "fused"}}))  # fmt: skip
    assert main(["plan", str(run), "--gpu-memory", "139.8"]) == 0
    out = capsys.readouterr().out
    assert f"activation offload on for {m} of 32 layers" in out
    assert "settings: train.grad_checkpointing=true train.activation_offload=auto" in out
    assert "pinned host memory (offload)" in out


def test_a_first_step_near_the_limit_offloads_every_layer():
    from qlora_kit.planning.live import MemoryDecision, check_first_step

    estimate = estimate_memory(model_shape(LlamaConfig(**TINY)), Bnb4bit.Config(), Adapter(), Settings(), 64)
    some = MemoryDecision(Settings(True, True, offload_layers=1), 64, estimate, capacity=100)
    every = MemoryDecision(Settings(True, True), 64, estimate, capacity=100)
    assert some.describe().startswith(
        "checkpointing on, activation offload on for the first 1 decoder layers"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 95)
        assert check_first_step(some, torch.device("cuda")) is True
        assert check_first_step(every, torch.device("cuda")) is False  # nothing left to turn on


def test_host_memory_limits_how_many_layers_offload(llama_8b, tmp_path, capsys):
    import yaml

    from qlora_kit.cli import main

    path, shape = llama_8b
    seq = 393216
    cfg = _cfg(path, 1, seq, grad_checkpointing="auto", activation_offload="auto", loss={"kind": "fused"})
    cfg = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"dropout": 0.0})})  # W3's

    def choose(host):
        return choose_settings(cfg, gpu_memory_gib=139.8, shape=shape, host_memory_gib=host)

    roomy, unjudged, small = choose(125), choose(None), choose(64)
    m = roomy.settings.offload_layers
    assert roomy.verdict == "fits" and 0 < m < 32 and roomy.memory.host_bytes <= 0.7 * 125 * 2**30
    assert unjudged.settings == roomy.settings  # the fewest layers that fit the GPU also fit 70% of 125 GiB
    # 64 GiB of host memory: the fewest layers the GPU needs offloaded pin too much, so nothing fits
    assert small.verdict == "does not fit" and small.memory.host_bytes > 0.7 * 64 * 2**30
    assert any("more than 70% of the host's 64 GiB" in n for n in small.memory.notes)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {"name_or_path": str(path)}, "data": {"max_length": seq},
                                   "adapter": {"dropout": 0.0}, "train": {"micro_batch_size": 1, "loss": "fused"}}))  # fmt: skip
    assert main(["plan", str(run), "--gpu-memory", "139.8", "--host-memory", "64", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["verdict"] == "does not fit" and plan["host_memory_gib"] == 64
    assert main(["plan", str(run), "--host-memory", "-1"]) == 2
    assert "--host-memory: '-1' is not a finite number > 0" in capsys.readouterr().err


def test_plans_give_the_light_dropout_to_wide_models_only(llama_8b, tiny_llama_dir):
    from qlora_kit.planning.from_config import adapter_of

    path, shape = llama_8b
    assert adapter_of(_cfg(path, 2, 2048), shape).light_dropout  # hidden 4096
    assert not adapter_of(
        _cfg(tiny_llama_dir, 2, 64), model_shape(load_model_config(str(tiny_llama_dir)))
    ).light_dropout


def test_light_dropout_can_be_turned_off_from_the_command_line(llama_8b, tmp_path, capsys):
    import yaml

    from qlora_kit.cli import main

    path, _ = llama_8b
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {"name_or_path": str(path)}, "data": {"max_length": 2048},
                                   "train": {"micro_batch_size": 2, "compile": False, "grad_checkpointing": False,
                                             "activation_offload": False}}))  # fmt: skip

    def kept(*overrides):
        assert main(["plan", str(run), *overrides, "--gpu-memory", "139.8", "--json"]) == 0
        return json.loads(capsys.readouterr().out)["components_gib"]["activations kept for backward"]

    light, peft = kept(), kept("adapter.light_dropout=false")
    assert peft - light == pytest.approx(32 * 4096 * (256360 - 184680) / 2**30, abs=0.01)


def test_small_passes_of_a_large_model_are_bound_by_the_host(llama_8b):
    """Per-pass host work (H200 run 2026-11-30o): two 2,048-token passes of the 8B shape ran at 9,331
    tokens/s, 18 checkpointed layers at 6,212; one 4,096-token pass stays bound by the device."""
    from qlora_kit.planning.speed import HOST_SECONDS_PER_LAYER, HOST_SECONDS_PER_RECOMPUTED_LAYER

    path, shape = llama_8b
    adapter = Adapter(r=16, optimizer="paged_adamw_8bit")

    def speed(tokens, **settings):
        return estimate_speed(shape, adapter, Settings(loss="fused", compiled=True, **settings), tokens, 2048)

    small, ckpt = speed(2048, grad_checkpointing=False), speed(2048, checkpoint_layers=18)
    assert small.step_seconds == small.host_seconds == 32 * HOST_SECONDS_PER_LAYER
    assert ckpt.host_seconds == pytest.approx(small.host_seconds + 18 * HOST_SECONDS_PER_RECOMPUTED_LAYER)
    assert small.tokens_per_s == pytest.approx(9_331, rel=0.05) and ckpt.tokens_per_s == pytest.approx(
        6_212, rel=0.05
    )
    one_pass = speed(4096, grad_checkpointing=False)
    assert one_pass.step_seconds > one_pass.host_seconds  # the device's work is longer


def test_a_small_models_eager_steps_are_bound_by_the_host(tmp_path):
    """SmolLM2-135M's shape, 8 x 32 tokens (call 28a on an H200): 0.27 s a step eager, all host time; the
    planner says so, and plans compiled layers' host work lower."""
    from qlora_kit.planning.speed import HOST_SECONDS_PER_EAGER_LAYER

    config = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
    LlamaConfig(**config).save_pretrained(tmp_path)
    shape, adapter = _shape(tmp_path), Adapter(r=16, optimizer="adamw_torch")
    eager, compiled = (
        estimate_speed(shape, adapter, Settings(loss="fused", compiled=c, grad_checkpointing=False), 256, 32)
        for c in (False, True)
    )
    assert eager.step_seconds == eager.host_seconds == 30 * HOST_SECONDS_PER_EAGER_LAYER
    assert eager.step_seconds == pytest.approx(0.27, rel=0.05)
    assert compiled.host_seconds < eager.host_seconds


def test_the_fused_loss_is_planned_as_the_plain_head_for_few_rows():
    """The planner's fused-loss memory follows the loss itself: the plain head on every row while their fp32
    logits stay within head_loss's bound, one chunk's worth beyond it."""
    from qlora_kit.planning import memory
    from qlora_kit.training import head_loss

    assert memory.PLAIN_HEAD_LOGITS_BYTES == head_loss.PLAIN_HEAD_LOGITS_BYTES
    shape = model_shape(LlamaConfig(vocab_size=50_304, hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4))  # fmt: skip
    few = head_loss.default_chunk_tokens(shape.vocab, head_loss.PLAIN_HEAD_LOGITS_BYTES)
    assert memory.loss_bytes(shape, "fused", few) - memory.loss_bytes(shape, "chunked", few) == (
        14 * shape.vocab * (few - memory.LOSS_CHUNK_TOKENS)
    )
    many = 4 * few
    assert memory.loss_bytes(shape, "fused", many) == memory.loss_bytes(shape, "chunked", many)


def test_auto_settings_plan_with_the_adapter_given(llama_8b, monkeypatch):
    """`plan_run(..., adapter=...)` under `auto` checkpointing: the settings are chosen for that adapter (the
    override was dropped before the choice), e.g. the light dropout in compiled layers keeps 14.25 GiB less;
    `adapter_of` says what the library runs (``LightDropoutLinear.in_compiled``)."""
    path, shape = llama_8b
    cfg = _cfg(path, 2, 2048, grad_checkpointing="auto", compile=True)
    adapter = adapter_of(cfg, shape)

    def peak(**change) -> float:
        plan = plan_run(cfg, gpu_memory_gib=139.8, shape=shape, adapter=replace(adapter, **change))
        assert not plan.settings.grad_checkpointing  # fits either way
        return plan.memory.peak_allocated

    assert peak(light_in_compiled=False) - peak(light_in_compiled=True) == 32 * 4096 * (71680 + 45056)
    assert adapter.light_in_compiled is LightDropoutLinear.in_compiled is True
    monkeypatch.setattr(LightDropoutLinear, "in_compiled", False)
    assert not adapter_of(cfg, shape).light_in_compiled
