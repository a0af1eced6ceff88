"""The ``profile`` callback, from the command line: a few steps profiled, a summary a person can read."""

from __future__ import annotations

import json

import pytest

from qlora_kit.cli import main
from qlora_kit.training.profiling import summarise


@pytest.mark.parametrize(
    ("start", "steps", "profiled", "path"), [(1, 2, [2, 3], "prof"), (3, 5, [4, 4], None)]
)
def test_train_with_the_profile_callback_writes_the_op_table_and_summary(
    tiny_run_config, tmp_path, capsys, start, steps, profiled, path
):
    """Steps start+1 .. start+steps are profiled; a run that ends inside that window still writes it.
    The folder is the given one, or profile/ in the run's output dir."""
    cfg = tiny_run_config(max_steps=4, micro_batch_size=2)
    prof = tmp_path / path if path else tmp_path / "run" / "profile"
    where = f", path: {prof}" if path else ""
    override = f"train.callbacks=[{{kind: profile, start: {start}, steps: {steps}{where}}}]"
    assert main(["train", str(cfg), override]) == 0
    summary = json.loads((prof / "summary.json").read_text())
    assert summary["steps_profiled"] == profiled
    assert summary["device"] is False and summary["device_s_per_step"] == 0  # the CPU: no kernels
    assert summary["wall_s_per_step"] > 0 and summary["aten_ops_per_step"] > 50
    assert "aten::" in (prof / "ops.txt").read_text()
    assert f"profiled steps {profiled[0]}-{profiled[1]}" in capsys.readouterr().err


class _Event:
    def __init__(self, key, count, device_us=0, device_type="DeviceType.CPU"):
        self.key, self.count, self.self_device_time_total, self.device_type = (
            key,
            count,
            device_us,
            device_type,
        )


def test_summary_counts_launches_syncs_and_device_busy_time():
    events = [
        _Event("cudaLaunchKernel", 40), _Event("cudaStreamSynchronize", 2), _Event("aten::mm", 10, 500),
        _Event("ampere_gemm", 10, 400, "DeviceType.CUDA"), _Event("elementwise", 30, 100, "DeviceType.CUDA"),
    ]  # fmt: skip
    s = summarise(events, wall_s=0.01, steps=2)
    assert s["launches_per_step"] == 20 and s["syncs_per_step"] == 1 and s["aten_ops_per_step"] == 5
    assert (
        s["device_s_per_step"] == 250e-6
    )  # kernel rows only: the aten op's attributed time is not counted twice
    assert s["device_busy_fraction"] == 0.05
