"""Two CPU processes (torchrun, gloo) train exactly like one process accumulating over both shards.

With ``micro_batch_size=1``, process r takes micro-batches r, r+2, ...; so two processes with
``grad_accum=1`` see, per step, the same two micro-batches as one process with ``grad_accum=2``.
Token normalisation across processes (all-reduced counts, DDP's averaging undone) makes the updates
equal. The two-process run is also interrupted and resumed (each process saves its own RNG file).
Dropout is off: two processes draw other dropout masks than one process doing both halves.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from qlora_kit.training import Trainer

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import os, random, sys, torch
    from qlora_kit.model.adapters import AdapterBuilder
    from qlora_kit.config import ModelConfig, TrainConfig
    from qlora_kit.model import ModelLoader, prepare_for_training
    from qlora_kit.model.quant import Bnb4bit
    from qlora_kit.training import Callback, Trainer

    class Crash(Callback):
        def __init__(self, at):
            self.at = at

        def on_step_end(self, state, metrics):
            if state.step == self.at:
                raise SystemExit(3)

    def build(model_dir):
        loader = ModelLoader(ModelConfig(name_or_path=model_dir), Bnb4bit.Config(compute_dtype="float32"), "cpu")
        model = prepare_for_training(loader.load_model(), grad_checkpointing=False)
        torch.manual_seed(0)
        return AdapterBuilder(AdapterBuilder.Config(r=4, alpha=8, dropout=0.0)).apply(model)

    def rows():
        rng = random.Random(0)
        out = []
        for _ in range(8):
            ids = [rng.randrange(1, 300) for _ in range(rng.randint(4, 30))]
            out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
        return out

    def config(grad_accum, resume=False):
        return TrainConfig(max_steps=4, micro_batch_size=1, grad_accum=grad_accum, grad_checkpointing=False,
                           save_every=2, optimizer={"kind": "adamw_8bit", "lr": 1e-2}, max_grad_norm=0.5,
                           resume="auto" if resume else None,
                           micro_batch_tokens=None)  # one row per pass on both sides: the same sums

    if __name__ == "__main__":
        model_dir, out, crash_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "resume"
        model = build(model_dir)
        callbacks = [] if resume or crash_at == 0 else [Crash(crash_at)]
        Trainer(config(1, resume), output_dir=out, callbacks=callbacks).fit(model, rows(), rows()[:3])
        if int(os.environ.get("RANK", 0)) == 0:
            torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, f"{out}/adapters.pt")
    """
)


def _torchrun(script, *args):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(script),
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_two_processes_match_one_process_accumulating_and_resume_exactly(tiny_llama_dir, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    sys.path.insert(0, str(tmp_path))
    try:
        import train_ddp  # the same model, rows and config as the launched processes
    finally:
        sys.path.remove(str(tmp_path))
    model = train_ddp.build(str(tiny_llama_dir))
    single = Trainer(train_ddp.config(grad_accum=2), output_dir=tmp_path / "single").fit(
        model, train_ddp.rows(), train_ddp.rows()[:3]
    )
    expected = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    out = tmp_path / "ddp"
    crashed = _torchrun(script, tiny_llama_dir, out, 2, "fresh")
    assert crashed.returncode != 0 and (out / "checkpoint-2" / "rng-1.safetensors").is_file(), crashed.stderr
    resumed = _torchrun(script, tiny_llama_dir, out, 0, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    got = torch.load(out / "adapters.pt")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=name)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(single.history)  # steps 1-4 and the eval records, each once
