"""The plugin example (examples/plugins/qlora_extras + examples/configs/plugins.yaml) through the real CLI,
the plugin rules (strict options, re-registration, switching kinds), the pytest plugin's entry point, and
every command of docs/plugins.md."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_kit.cli import main as cli
from qlora_kit.registry import exporters

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "examples/configs/plugins.yaml"
DOC = ROOT / "docs" / "plugins.md"

COMMANDS = {
    "schema": "PYTHONPATH=examples qlora-kit schema --kinds --plugin plugins.qlora_extras",
    "validate": f"PYTHONPATH=examples qlora-kit validate {CONFIG}",
    "inspect": f"PYTHONPATH=examples qlora-kit inspect {CONFIG}",
    "train": f"PYTHONPATH=examples qlora-kit train {CONFIG}",
    "generate": 'PYTHONPATH=examples qlora-kit generate runs/plugins --trust-code --prompt "Who wrote Moby-Dick?"',
    "pytest": "python -m pytest examples/test_my_plugins.py",
}
"""Every command docs/plugins.md shows; each test below runs one (with the tiny model's overrides)."""


def sh(command: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a documented shell command in the repository root, with ``extra`` arguments appended: `qlora-kit`
    and `python` are this interpreter, leading `NAME=value` words set the environment."""
    words = shlex.split(command)
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        environ[name] = os.pathsep.join([value, environ.get(name, "")])
    environ["PYTHONPATH"] = os.pathsep.join([environ.get("PYTHONPATH", ""), *sys.path])  # this qlora_kit
    program = {"qlora-kit": [sys.executable, "-m", "qlora_kit.cli"], "python": [sys.executable]}[words[0]]
    return subprocess.run([*program, *words[1:], *extra], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def tiny(model_dir: Path) -> list[str]:
    return [f"model.name_or_path={model_dir}", "data.max_length=128"]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


# ------------------------------------------------------------------------------ a run through the CLI


@pytest.fixture(scope="module")
def plugin_run(tiny_llama_dir, tmp_path_factory):
    """`qlora-kit train examples/configs/plugins.yaml` on the tiny Llama, 2 steps, in a subprocess."""
    tmp = tmp_path_factory.mktemp("plugin-run")
    done = sh(COMMANDS["train"], *tiny(tiny_llama_dir), f"output_dir={tmp / 'run'}", "train.max_steps=2",
              f"train.callbacks=[{{kind: status_file, path: {tmp / 'status.json'}}}]",
              f"export.target_dir={tmp / 'store'}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_the_custom_loss_ran(plugin_run):
    _, done = plugin_run
    assert "train.loss=label_smoothing (smoothing 0.1)" in done.stderr


def test_the_custom_callback_ran(plugin_run):
    tmp, _ = plugin_run
    status = json.loads((tmp / "status.json").read_text())
    assert (status["status"], status["step"], status["total_steps"]) == ("finished", 2, 2)
    metrics = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert status["loss"] == [m for m in metrics if "loss" in m][-1]["loss"]


def test_the_custom_exporter_published_the_adapter(plugin_run):
    from qlora_kit.rundir.manifest import file_sha256, verify_manifest

    tmp, done = plugin_run
    published = tmp / "store" / "dolly-smollm2"
    assert f"published: {published}" in done.stdout
    summary = json.loads((published / "publish.json").read_text())
    assert summary["quant"] == "mixed_4_8" and summary["run"] == str(tmp / "run")
    assert summary["weights_sha256"] == file_sha256(tmp / "run" / "adapter" / "adapter_model.safetensors")
    assert verify_manifest(published, strict=True) == []


def test_generate_loads_the_run_with_its_plugins(plugin_run):
    tmp, _ = plugin_run
    done = sh(COMMANDS["generate"].replace("runs/plugins", str(tmp / "run")), "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr[-3000:]  # the plugins imported, the mixed_4_8 base loaded


def test_the_mixed_quantization_makes_4_and_8_bit_layers(tiny_llama_dir):
    done = sh(COMMANDS["inspect"], *tiny(tiny_llama_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    layers = {m["name"]: m["after"].split("(")[0] for m in report["replaced_modules"]}
    assert {k for n, k in layers.items() if n.endswith("down_proj")} == {"Linear8bitLt"}
    assert {k for n, k in layers.items() if not n.endswith("down_proj")} == {"Linear4bit"}
    assert report["params_by_storage"]["8-bit"] == 2 * 64 * 128  # two layers' down_proj, 128 -> 64
    assert report["params_by_storage"]["4-bit"] > 0


# -------------------------------------------------------------------------------------- plugin rules


def test_schema_lists_the_plugin_kinds():
    done = sh(COMMANDS["schema"])
    assert done.returncode == 0, done.stderr[-3000:]
    sections = dict(re.findall(r"^(\w+):\n((?:  .*\n)*)", done.stdout, re.M))
    for registry, kind in [("quantization", "mixed_4_8"), ("exporters", "publish"),
                           ("losses", "label_smoothing"), ("callbacks", "status_file")]:  # fmt: skip
        assert re.search(rf"^  {kind} ", sections[registry], re.M), f"{kind} not under {registry}:"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("quant.eight_bit_modulez=[down_proj]", "'eight_bit_modulez' (did you mean 'eight_bit_modules'?)"),
        ("export.taget_dir=/tmp/x", "'taget_dir' (did you mean 'target_dir'?)"),
        ("data.formatter.context_heder=x", "'context_heder' (did you mean 'context_header'?)"),
        ("train.loss.smoothing=1.5", "train.loss.smoothing"),
    ],
)
def test_a_wrong_plugin_option_is_an_error_naming_it(in_repo, capsys, override, named):
    assert cli(["validate", CONFIG, override]) == 2
    assert named in capsys.readouterr().err


def test_an_eight_bit_module_that_matches_no_layer_is_an_error(in_repo, tiny_llama_dir):
    from qlora_kit import ConfigError, ModelLoader, load_config

    cfg = load_config(CONFIG, [*tiny(tiny_llama_dir), "quant.eight_bit_modules=[down_prj]"])
    with pytest.raises(ConfigError, match=r"quant.eight_bit_modules: 'down_prj' matches no linear layer"):
        ModelLoader(cfg.model, cfg.quant, device="cpu").load_model()


def test_registering_the_same_class_again_is_not_an_error(in_repo):
    import plugins.qlora_extras.publish as publish

    first = exporters.get("publish")
    reloaded = importlib.reload(publish)  # a re-run module (or notebook cell) defines the class anew
    assert exporters.get("publish") is reloaded.PublishExporter is not first

    with pytest.raises(ValueError, match="exporter 'publish' is already registered"):
        exporters.register("publish")(type("Other", (), {}))


def test_switching_the_export_kind_drops_the_plugin_exporters_options():
    done = sh(COMMANDS["validate"], "export.kind=none")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "export:\n  kind: none\n" in done.stdout and "target_dir" not in done.stdout


# ------------------------------------------------------------------------------------ pytest plugin


@pytest.fixture(scope="module")
def entry_point_path(tmp_path_factory) -> str:
    """A directory that makes pyproject.toml's pytest11 entry points visible to importlib.metadata, as
    `pip install` does (without touching the shared environment)."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.entry-points.pytest11]\n", 1)[1]
    points = dict(re.findall(r'^"?([\w.]+)"? = "([\w.]+)"$', section.split("\n[", 1)[0], re.M))
    assert points, "pyproject.toml declares no pytest11 entry point"
    root = tmp_path_factory.mktemp("entry-points")
    info = root / "qlora_kit_entry_points_under_test-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: qlora-kit-entry-points-under-test\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    return str(root)


def test_the_example_plugin_tests_pass_with_the_installed_pytest_plugin(entry_point_path):
    done = sh(COMMANDS["pytest"], "-q", "-p", "no:cacheprovider", env={"PYTHONPATH": entry_point_path})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\b7 passed\b", done.stdout), done.stdout[-2000:]


def test_naming_the_plugin_beside_its_entry_point_is_harmless(entry_point_path):
    """Installed (the entry point), named on the command line and in tests/conftest.py's `pytest_plugins`:
    pytest registers it once, without "Plugin already registered under a different name"."""
    done = sh("python -m pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "qlora_kit.testing.plugin",
              "tests/unit/test_quant.py", env={"PYTHONPATH": entry_point_path})  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# --------------------------------------------------------------------------------------------- docs


def test_every_command_in_the_plugins_page_is_run_here():
    shown = re.findall(r"^\$ (.+)$", DOC.read_text(), re.M)
    assert shown and set(shown) == set(COMMANDS.values())


CHECK_THE_PAGES_CODE = """
# ---- after every python block of docs/plugins.md, in order: use what they define
import sys
from qlora_kit import run
from qlora_kit.testing import make_alpaca_rows, make_tokenizer

test_dolly_keeps_the_formatter_contract(make_tokenizer())
decay = schedulers.make("step_decay", milestones=[0.5]).build()
assert [decay.factor(step, total_steps=4) for step in (1, 3)] == [1.0, 0.1]
result = run({
    "output_dir": sys.argv[2], "model": {"name_or_path": sys.argv[1]}, "adapter": {"kind": "lora_fa", "r": 4},
    "data": {"source": {"rows": make_alpaca_rows(16)}, "formatter": {"kind": "alpaca"}, "max_length": 128},
    "train": {"max_steps": 4, "micro_batch_size": 2, "log_every": 1, "optimizer": {"kind": "sgd", "lr": 0.05},
              "scheduler": {"kind": "step_decay"}, "callbacks": [{"kind": "stop_at_loss", "target": 100}]},
    "export": "none",
})
assert result.train.steps == 1, result.train.steps  # stop_at_loss ended the run after its first step
trainable = {n: p.requires_grad for n, p in result.model.named_parameters() if "lora_" in n}
assert trainable and all(t == ("lora_B" in n) for n, t in trainable.items())  # lora_fa: A frozen, B trains
assert isinstance(optimizers.make("sgd").build().create(result.model), torch.optim.SGD)
print("the page's code works")
"""


def test_the_python_code_in_the_plugins_page_works(tiny_llama_dir, tmp_path):
    """Every python block, run in order in a fresh process (its kinds must not leak into this one), then used."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.M | re.S)
    script = tmp_path / "page.py"
    script.write_text("\n\n".join([*blocks, CHECK_THE_PAGES_CODE]))
    done = sh(f"PYTHONPATH=examples python {script}", str(tiny_llama_dir), str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the page's code works" in done.stdout
