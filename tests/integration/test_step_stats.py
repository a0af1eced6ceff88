"""Each step's loss and gradient norm read one step late (``training.step_stats``), forced on the CPU here (on
a GPU it is the default with fused AdamW): the same metrics and weights as reading them at once, through
the CLI. A non-finite step still updates nothing and is named (tests/integration/test_trainer.py), and a crash
and resume still end bit-identical (test_trainer_resume.py).
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from qlora_kit.cli import main


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_run_reading_late_logs_and_trains_exactly_as_reading_at_once(tiny_run_config, tmp_path, request):
    cfg = tiny_run_config(max_steps=5, micro_batch_size=2, grad_accum=2, log_every=2, save_every=3)
    assert main(["train", str(cfg), "adapter.dropout=0.1"]) == 0
    late = tmp_path / "late"
    seen = request.getfixturevalue("deferring")  # from here on
    assert main(["train", str(cfg), "adapter.dropout=0.1", f"output_dir={late}"]) == 0
    assert seen == [True]
    at_once = _metrics(tmp_path / "run")
    assert [(r["step"], r.get("loss"), r.get("grad_norm")) for r in _metrics(late)] == [
        (r["step"], r.get("loss"), r.get("grad_norm")) for r in at_once
    ]
    assert [r["step"] for r in at_once if "loss" in r] == [2, 4, 5]  # every log line, the last step's too
    a = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(late / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
