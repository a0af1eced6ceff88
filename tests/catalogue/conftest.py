"""The bad-input catalogue's world: tiny models, broken files and a base config, built once per session;
and the one rule every case checks (`assert_clear_error`).

A case is a command line with ``{placeholders}`` naming files of the world (``{base}`` is a valid run
config on the tiny Llama), run in-process through ``qlora_kit.cli.main``, and the fragments its message
must contain. The rule: exit code != 0, exactly one ``error:`` line, which is the last thing printed
(followed at most by the indented lines of a ConfigError), naming what the fragments name, and no
traceback anywhere in stderr.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from qlora_kit.cli import main
from qlora_kit.testing import make_alpaca_rows, make_distilgpt2_shape, make_tiny_gguf

MAX_BLOCK_LINES = 8  # an error line plus a few indented ConfigError lines


def assert_clear_error(rc: int, err: str, expect: tuple[str, ...] | list[str]) -> str:
    """Check the catalogue's rule on a command's exit code and stderr; return the error block."""
    assert rc != 0, f"exit code 0; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1, f"expected exactly one 'error:' line, got {len(starts)}:\n{err}"
    block = lines[starts[0] :]
    assert len(block) <= MAX_BLOCK_LINES and all(line.startswith("  ") for line in block[1:]), (
        f"the error is not one line (or a short ConfigError block) at the end of stderr:\n{err}"
    )
    text = "\n".join(block)
    for fragment in expect:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    return text


@dataclass
class World:
    """Paths of the catalogue's files, by placeholder name."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, path: Path) -> Path:
        self.paths[name] = str(path)
        return path

    def fmt(self, argv: list[str]) -> list[str]:
        return [arg.format(**self.paths) for arg in argv]


@pytest.fixture(scope="session")
def world(tmp_path_factory, tokenizer, tiny_llama_dir) -> World:
    w = World(tmp_path_factory.mktemp("catalogue"))
    w.paths["root"] = str(w.root)
    _models(w, tokenizer, tiny_llama_dir)
    _data(w)
    _configs(w)
    w.add("file", w.root / "a_file.txt").write_text("not a directory\n")
    w.add("empty", w.root / "empty_dir").mkdir()
    w.add("hub_cache", w.root / "hub-cache").mkdir()
    w.paths["out"] = str(w.root / "runs")
    return w


def _models(w: World, tokenizer, llama: Path) -> None:
    w.add("llama", llama)
    tok = w.add("tok", w.root / "tokenizer")
    tokenizer.save_pretrained(tok)
    # A GPT-2 with a learned table of 64 positions: max_length 256 would index past it.
    make_distilgpt2_shape(
        w.add("gpt2_64", w.root / "gpt2-64"), tokenizer, n_layer=1, n_embd=32, n_head=2,
        n_positions=64, vocab_size=len(tokenizer),
    )  # fmt: skip
    truncated = w.add("llama_truncated", w.root / "llama-truncated")
    shutil.copytree(llama, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    nan = w.add("llama_nan", w.root / "llama-nan")
    shutil.copytree(llama, nan)
    _overwrite_data(nan / "model.safetensors", b"\xff" * 4096)  # NaN float32s behind a valid header
    (w.add("no_config", w.root / "no-config")).mkdir()
    gguf = w.add("gguf_truncated", w.root / "truncated.gguf")
    make_tiny_gguf(gguf, tokenizer)
    gguf.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 2])


def _overwrite_data(path: Path, data: bytes) -> None:
    """Overwrite bytes in the middle of a safetensors file's tensor data, keeping its header valid."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    middle = start + (len(raw) - start) // 2
    raw[middle : middle + len(data)] = data
    path.write_bytes(bytes(raw))


def _data(w: World) -> None:
    rows = make_alpaca_rows(16)
    w.add("rows", w.root / "rows.json").write_text(json.dumps(rows))
    lines = [json.dumps(r) for r in rows[:4]]

    def jsonl(name: str, body: list[str] | bytes) -> None:
        path = w.add(name, w.root / f"{name}.jsonl")
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text("\n".join(body) + "\n")

    jsonl(
        "latin1_jsonl",
        ("\n".join(lines[:2]) + '\n{"instruction": "caf\xe9", "output": "x"}\n').encode("latin-1"),
    )
    jsonl("broken_jsonl", [*lines[:3], '{"instruction": "x", "output": }'])
    jsonl("not_object_jsonl", [lines[0], '["a", "list"]'])
    jsonl("missing_field_jsonl", [*lines[:2], '{"instruction": "Do it."}', *lines[2:]])
    jsonl("int_field_jsonl", [*lines[:2], '{"instruction": "Do it.", "output": 42}'])
    w.add("latin1_json", w.root / "latin1.json").write_bytes(
        ("[\n" + lines[0] + ',\n{"instruction": "\xfcber", "output": "x"}\n]').encode("latin-1")
    )
    w.add("latin1_csv", w.root / "latin1.csv").write_bytes(
        "instruction,output\na,b\ncaf\xe9,x\n".encode("latin-1")
    )
    w.add("nested_json", w.root / "nested.json").write_text(json.dumps({"data": rows}, indent=2))
    w.add("one_row", w.root / "one_row.json").write_text(json.dumps(rows[:1]))
    w.add("xlsx", w.root / "rows.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    w.add("qa_rows", w.root / "qa.json").write_text(
        json.dumps([{"question": r["instruction"], "answer": r["output"]} for r in rows])
    )


def _configs(w: World) -> None:
    base = {
        "output_dir": str(w.root / "runs" / "base"),
        "model": {"name_or_path": w.paths["llama"], "cache_dir": str(w.root / "hub-cache")},
        "quant": {"kind": "none", "compute_dtype": "float32"},
        "adapter": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "data": {"source": {"path": w.paths["rows"]}, "max_length": 128},
        "train": {"max_steps": 2, "micro_batch_size": 2, "log_every": 1},
        "export": {"kind": "none"},
    }
    w.add("base", w.root / "base.yaml").write_text(yaml.safe_dump(base))
    w.add("list_yaml", w.root / "list.yaml").write_text("- a\n- b\n")
    w.add("bad_yaml", w.root / "bad.yaml").write_text("train: [unclosed\n")
    w.add("latin1_yaml", w.root / "latin1.yaml").write_bytes("output_dir: caf\xe9\n".encode("latin-1"))


@pytest.fixture(autouse=True)
def fresh_library_logging():
    """Each in-process ``main()`` sees the `qlora_kit` logger as a new process would: a handler the
    CLI attaches (bound to the stderr of the test that first ran it) is removed after each case."""
    library = logging.getLogger("qlora_kit")
    saved = (list(library.handlers), library.level, library.propagate)
    yield
    library.handlers[:], library.level, library.propagate = saved


class LogRecords(logging.Handler):
    """Collects the records of one logger (caplog misses them once the CLI stops propagation)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LogRecords:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def log_records():
    """``with log_records("qlora_kit.x") as logs: ...; logs.messages()``."""
    return LogRecords


@pytest.fixture
def run_cli(capsys):
    """Run ``qlora_kit.cli.main(argv)`` in-process; return ``(exit code, stderr)``."""

    def run(argv: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(argv)
        return rc, capsys.readouterr().err

    return run


@pytest.fixture
def clear_error():
    """:func:`assert_clear_error`, for cases that run the command themselves (e.g. in a subprocess)."""
    return assert_clear_error


@pytest.fixture
def expect_error(world, run_cli):
    """``expect_error(argv, fragments)``: run ``argv`` (placeholders filled from the world) in-process
    and check the catalogue's rule; returns the error block."""

    def check(argv: list[str], expect: tuple[str, ...] | list[str]) -> str:
        return assert_clear_error(*run_cli(world.fmt(argv)), expect)

    return check


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on (a connection is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
