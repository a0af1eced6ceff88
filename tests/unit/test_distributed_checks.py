"""The FSDP checks that run before anything is sharded (the launches themselves are GPU tests)."""

from __future__ import annotations

import types

import pytest
import torch

from qlora_kit.config import ModelConfig, TrainConfig
from qlora_kit.errors import ConfigError, TrainingError
from qlora_kit.model import ModelLoader
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.training.distributed import (
    check_fsdp_settings,
    check_sharded_forward,
    gather_4bit_weights_uncast,
)


def _accelerator(fsdp_version):
    plugin = None if fsdp_version is None else types.SimpleNamespace(fsdp_version=fsdp_version,
                                                                     mixed_precision_policy="bf16 cast")  # fmt: skip
    return types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin))


@pytest.fixture(scope="module")
def model_4bit(tiny_llama_dir):
    cfg = Bnb4bit.Config(compute_dtype="bfloat16", quant_storage="bfloat16")
    return ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), cfg, "cpu").load_model()


def test_fsdp2_with_4bit_weights_gathers_them_uncast(model_4bit):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    acc = _accelerator(2)
    assert gather_4bit_weights_uncast(acc, model_4bit)
    policy = acc.state.fsdp_plugin.mixed_precision_policy
    assert isinstance(policy, MixedPrecisionPolicy) and policy.param_dtype is None


def test_the_policy_is_left_alone_without_4bit_weights_or_fsdp2(model_4bit):
    plain = torch.nn.Linear(4, 4)
    for acc, model in [
        (_accelerator(2), plain),
        (_accelerator(1), model_4bit),
        (_accelerator(None), model_4bit),
    ]:
        assert not gather_4bit_weights_uncast(acc, model)
        plugin = acc.state.fsdp_plugin
        assert plugin is None or plugin.mixed_precision_policy == "bf16 cast"


def test_sharded_forward_check_refuses_a_different_model():
    before = torch.tensor([[1.0, -2.0, 4.0]])
    assert check_sharded_forward(before, before + 1e-3) < 1e-3
    with pytest.raises(TrainingError, match="differ .* by 0.25"):
        check_sharded_forward(before, before + torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(TrainingError):
        check_sharded_forward(before, torch.tensor([[float("nan"), 0.0, 0.0]]))


def test_fsdp_refuses_bitsandbytes_optimizers_and_integer_storage(model_4bit, tiny_llama_dir):
    with pytest.raises(ConfigError, match="train.optimizer.kind"):
        check_fsdp_settings(TrainConfig(optimizer={"kind": "paged_adamw_8bit"}), model_4bit)
    check_fsdp_settings(TrainConfig(optimizer={"kind": "adamw_torch"}), model_4bit)
    packed = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(quant_storage="uint8"),
                         "cpu").load_model()  # fmt: skip
    with pytest.raises(ConfigError, match="quant.quant_storage"):
        check_fsdp_settings(TrainConfig(optimizer={"kind": "adamw_torch"}), packed)


_ONE_PROCESS_MESH = """
import os, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
"""


def _on_one_process_mesh(code: str) -> list[str]:
    """Runs ``code`` after a one-process gloo group and CPU ``mesh`` exist, in a fresh interpreter (the
    process group stays out of this one); returns its printed lines."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PORT": port, "OMP_NUM_THREADS": "1"}
    script = _ONE_PROCESS_MESH + code + "\ndist.destroy_process_group()\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


_DTENSOR_NORM = """
from torch.distributed.tensor import Shard, distribute_tensor
from qlora_kit.training.distributed import local_tensor
param = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
param.grad = distribute_tensor(torch.full((4, 2), 0.5), mesh, [Shard(0)])
norm = torch.nn.utils.clip_grad_norm_([param], 1.0)  # what the loop gets under FSDP2
try:
    torch.stack([torch.zeros(()), norm.float()]).tolist()
    print("plain stack worked")
except RuntimeError:
    print("DTensor refused")
print(torch.stack([torch.zeros(()), local_tensor(norm).float()]).tolist())
"""


def test_the_fsdp2_gradient_norm_dtensor_becomes_a_plain_number():
    """Under FSDP2 the gradient norm is a DTensor, which the loop's one sync per step (stack + tolist)
    refused on two H200s; local_tensor turns it into the plain value (a one-process CPU mesh here)."""
    refused, values = _on_one_process_mesh(_DTENSOR_NORM)
    assert refused == "DTensor refused"  # the failure this guards against still exists upstream
    assert values == "[0.0, 1.4142135381698608]"  # sqrt(8 x 0.25)


_ROOT_AFTER_FORWARD = """
from torch.distributed.fsdp import fully_shard
from qlora_kit.training.distributed import reshard_root
model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
fully_shard(model[1], mesh=mesh)
fully_shard(model, mesh=mesh)  # the root holds the embedding and the head, as in a causal LM
with torch.no_grad():  # the forward check
    model(torch.tensor([[1, 2]]))
print(type(model[2].weight).__name__, type(model[1].weight).__name__)
reshard_root(model)
print(type(model[2].weight).__name__)
reshard_root(torch.nn.Linear(2, 2))  # a model FSDP did not wrap: nothing to do
"""


def test_the_forward_check_leaves_no_parameter_gathered():
    """FSDP2 keeps the root's parameters gathered after a forward (a backward is expected next); after
    the forward check reshard_root frees them, so memory after loading is the sharded size."""
    after_forward, after_reshard = _on_one_process_mesh(_ROOT_AFTER_FORWARD)
    assert after_forward == "Parameter DTensor"  # the root's gathered, the inner block resharded
    assert after_reshard == "DTensor"


@pytest.mark.parametrize("kind", ["merged", "gguf"])
def test_an_fsdp_launch_refuses_an_export_that_needs_the_whole_base_before_loading(
    tmp_path, kind, monkeypatch, capsys
):
    """From the command line, as `accelerate launch` with an FSDP config would run it: exit 2, naming
    export.kind and the two-step way, and nothing loaded or written."""
    import yaml

    from qlora_kit.cli import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tmp_path / "no-such-model")},
        "data": {"source": {"path": str(tmp_path / "no-such-rows.jsonl")}}, "export": {"kind": kind},
    }))  # fmt: skip
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "export.kind" in err and f"qlora-kit export RUN_DIR --kind {kind}" in err
    assert not any((tmp_path / "run").glob("*"))  # refused before the model or data were looked at


def test_the_adapter_export_writes_gathered_tensors_as_peft_does(tiny_llama_dir, tmp_path):
    """Under FSDP the exporter gets the trainable tensors gathered from the shards; written through PEFT,
    they give the same adapter file as the model's own (here unsharded) tensors."""
    from safetensors.torch import load_file

    from qlora_kit.config import RunConfig
    from qlora_kit.export import AdapterExporter
    from qlora_kit.model import AdapterBuilder
    from qlora_kit.testing import make_tokenizer, perturb_lora
    from qlora_kit.training.distributed import full_trainable_state

    base = ModelLoader(ModelConfig(name_or_path=str(tiny_llama_dir)), Bnb4bit.Config(), "cpu").load_model()
    model = perturb_lora(
        AdapterBuilder(AdapterBuilder.Config(r=4, alpha=8)).apply(base)
    )  # not the shared one
    cfg = RunConfig.model_validate({"model": {"name_or_path": "x"}, "data": {"source": {"path": "y"}}})
    gathered = {k: v * 2 for k, v in full_trainable_state(model).items()}  # distinct from the model's own
    AdapterExporter(None).export(model, make_tokenizer(), tmp_path / "own", cfg)
    AdapterExporter(None).export(model, make_tokenizer(), tmp_path / "fsdp", cfg, adapter_state=gathered)
    own = load_file(tmp_path / "own" / "adapter" / "adapter_model.safetensors")
    written = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert own.keys() == written.keys() and len(own) > 0
    assert all(torch.equal(written[k], own[k] * 2) for k in own)
