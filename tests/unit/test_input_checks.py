"""The checks behind the bad-input catalogue, one by one: hub ids, position limits, attention kernels,
non-finite weights, torn metrics lines, atomic plots and reports, trackers, non-UTF-8 data."""

from __future__ import annotations

import errno
import http.server
import json
import logging
import threading

import pytest
import torch

from qlora_kit.errors import ConfigError, DataError, ModelLoadError, StorageError, UsageError
from qlora_kit.model import hub
from qlora_kit.model.checks import (
    check_attn_implementation,
    check_finite_weights,
    check_max_length,
    position_limit,
)
from qlora_kit.training.tracking import check_trackers, plot_loss_curve, truncate_jsonl

# ------------------------------------------------------------------------------------ hub ids


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [
        ("distilbert/distilgpt2", True), ("gpt2", True), ("runs/tiny", True),
        ("./runs/tiny", False), ("/abs/model", False), ("~/model", False), ("a/b/c", False),
        ("my model", False), ("x..y", False), ("C:\\models\\tiny", False), ("-x", False),
    ],
)  # fmt: skip
def test_what_may_go_to_the_hub(name, hub_id):
    assert hub.is_hub_id(name) is hub_id


def test_a_cached_hub_id_is_not_probed(monkeypatch):
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("probed a cached model"))
    hub.check_hub_id("org/model", "model.name_or_path")


def test_offline_and_not_cached(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"model.name_or_path: .*'org/model'.*HF_HUB_OFFLINE=1 forbids"):
        hub.check_hub_id("org/model", "model.name_or_path", cache_dir=str(tmp_path))


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every HEAD with the status and X-Error-Code the test sets (as huggingface.co does)."""

    answer: tuple[int, str | None] = (200, None)

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        status, code = self.answer
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("ETag", '"abc"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    template = f"http://127.0.0.1:{server.server_port}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    yield lambda status, code=None: setattr(_FakeHub, "answer", (status, code))
    server.shutdown()
    _FakeHub.answer = (200, None)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, "RepoNotFound", "the hub has no such model"),
        (403, "GatedRepo", "gated on the hub"),
        (404, "RevisionNotFound", "no revision 'v9'"),
        (404, "EntryNotFound", "has no config.json"),
        (500, None, "the hub cannot be reached"),
    ],
)
def test_probe_outcomes_are_one_line(fake_hub, tmp_path, status, code, message):
    fake_hub(status, code)
    with pytest.raises(ModelLoadError, match=message) as info:
        hub.check_hub_id("org/model", "model.name_or_path", revision="v9", cache_dir=str(tmp_path))
    assert "\n" not in str(info.value)


def test_probe_passes_a_downloadable_model(fake_hub, tmp_path):
    fake_hub(200)
    hub.check_hub_id("org/model", "model.name_or_path", cache_dir=str(tmp_path))
    fake_hub(404, "EntryNotFound")  # a tokenizer repository need not have the probed file
    hub.check_hub_id(
        "org/tok", "model.tokenizer", filename="x.json", require_file=False, cache_dir=str(tmp_path)
    )


# ------------------------------------------------------------------------------ position limit


def test_learned_positions_limit_max_length():
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    gpt2 = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=100)
    assert position_limit(gpt2) == (64, "n_positions")
    opt = OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                    max_position_embeddings=128, vocab_size=100, word_embed_proj_dim=32)  # fmt: skip
    assert position_limit(opt) == (128, "max_position_embeddings")
    llama = LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        max_position_embeddings=64, vocab_size=100)  # fmt: skip
    assert position_limit(llama) is None  # RoPE: longer inputs run (with degrading quality)
    check_max_length(llama, 4096, "llama")
    check_max_length(gpt2, 64, "gpt2")
    with pytest.raises(ConfigError) as info:
        check_max_length(gpt2, 65, "gpt2")
    assert (
        info.value.errors[0][0] == "data.max_length"
        and "use data.max_length <= 64" in info.value.errors[0][1]
    )


# ---------------------------------------------------------------------------- attention kernel


def test_flash_attention_needs_cuda_its_package_and_16_bits(monkeypatch):
    check_attn_implementation("sdpa", torch.device("cpu"), "float32")
    check_attn_implementation(None, torch.device("cpu"), "float32")
    with pytest.raises(ModelLoadError, match="flash_attention_2 needs a CUDA GPU.*use `sdpa`"):
        check_attn_implementation("flash_attention_2", torch.device("cpu"), "bfloat16")
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"flash_attn package is not installed \(pip install flash-attn"):
        check_attn_implementation("flash_attention_2", cuda, "bfloat16")
    with pytest.raises(ModelLoadError, match="flash_attention_3: the flash_attn_interface package"):
        check_attn_implementation("flash_attention_3", cuda, "bfloat16")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    check_attn_implementation("flash_attention_2", cuda, "bfloat16")
    with pytest.raises(ModelLoadError, match="float16 or bfloat16 only, and the compute dtype is float32"):
        check_attn_implementation("flash_attention_2", cuda, "float32")


# --------------------------------------------------------------------------- non-finite weights


def test_non_finite_weights_are_named_with_their_file(tmp_path, tokenizer):
    from qlora_kit.testing import make_tiny_llama

    model = make_tiny_llama(tmp_path, tokenizer)
    check_finite_weights(model, tmp_path)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 4] = float("inf")
    with pytest.raises(
        ModelLoadError, match=r"model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight'"
    ):
        check_finite_weights(model, tmp_path)


@pytest.mark.parametrize("double_quant", [True, False])
def test_non_finite_weights_are_seen_through_4bit_scales(tmp_path, tokenizer, double_quant):
    from safetensors.torch import load_file, save_file

    from qlora_kit.config.io import load_config
    from qlora_kit.model.loading import ModelLoader
    from qlora_kit.testing import make_tiny_llama

    make_tiny_llama(tmp_path, tokenizer)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.0.self_attn.o_proj.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    cfg = load_config(
        {"model": {"name_or_path": str(tmp_path)}},
        ["quant.kind=bnb_4bit", "quant.compute_dtype=float32", f"quant.double_quant={double_quant}"],
    )
    loader = ModelLoader(cfg.model, cfg.quant, "cpu")
    with pytest.raises(ModelLoadError, match="'model.layers.0.self_attn.o_proj.weight' holds NaN"):
        loader.load_model()


# -------------------------------------------------------------------------- metrics and plots


class _Records(logging.Handler):
    """The records of one logger, attached to it directly (caplog depends on propagation, which the
    CLI turns off for the library's logger)."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    logger, seen = logging.getLogger("qlora_kit.training.tracking"), _Records()
    logger.addHandler(seen)
    try:
        kept = truncate_jsonl(path, 2)
    finally:
        logger.removeHandler(seen)
    assert kept == records[:2]
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records[:2])
    assert seen.messages == [f"{path} line 4: not a complete JSON record (a torn write?); dropped"]
    assert truncate_jsonl(tmp_path / "absent.jsonl", 5) == []


def _disk_full(monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("qlora_kit.files.os.fsync", full)


def test_a_full_disk_leaves_no_empty_loss_curve(tmp_path, monkeypatch):
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]
    assert plot_loss_curve(history, tmp_path / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "loss_curve.png").unlink()
    _disk_full(monkeypatch)
    with pytest.raises(StorageError, match=r"loss_curve.png failed: no space left on the device"):
        plot_loss_curve(history, tmp_path / "loss_curve.png")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_leaves_no_empty_data_report(tmp_path, monkeypatch, tokenizer):
    from qlora_kit.config import DataConfig
    from qlora_kit.data import build_datasets, build_formatter
    from qlora_kit.testing import make_alpaca_rows

    cfg = DataConfig.model_validate({"source": {"rows": make_alpaca_rows(8)}})
    report = build_datasets(cfg, build_formatter(cfg.formatter), tokenizer).report
    written = report.write(tmp_path / "ok")
    assert [p.stat().st_size > 0 for p in written] == [True, True, True]
    _disk_full(monkeypatch)
    with pytest.raises(StorageError, match=r"data_report.json failed: no space left"):
        report.write(tmp_path / "full")
    assert list((tmp_path / "full").iterdir()) == []


# ------------------------------------------------------------------------------------ trackers


def test_trackers_that_are_not_installed(monkeypatch):
    monkeypatch.setattr("accelerate.utils.is_tensorboard_available", lambda: False)
    monkeypatch.setattr("accelerate.utils.is_wandb_available", lambda: True)
    check_trackers([])
    check_trackers(["wandb"])
    with pytest.raises(ConfigError) as info:
        check_trackers(["tensorboard", "wandb"])
    assert info.value.errors == [
        ("train.trackers", "tensorboard not installed: pip install 'qlora_kit[tensorboard]', or leave it out")
    ]


# -------------------------------------------------------------------------- data and devices


def test_non_utf8_names_line_and_offset_and_a_bom_is_fine(tmp_path, tokenizer):
    from qlora_kit.config import SourceConfig
    from qlora_kit.data.sources import load_source

    path = tmp_path / "rows.jsonl"
    good = '{"instruction": "é", "output": "ok"}\n'  # a 2-byte character before the bad byte
    path.write_bytes(good.encode() + b'{"instruction": "x\xff", "output": "ok"}\n')
    with pytest.raises(
        DataError, match=r"rows.jsonl: not valid UTF-8 at line 2, byte 19 of the line \(file offset 56"
    ):
        load_source(SourceConfig(path=str(path)))
    path.write_bytes(b"\xef\xbb\xbf" + good.encode())
    assert load_source(SourceConfig(path=str(path))).rows == [{"instruction": "é", "output": "ok"}]


def test_a_device_name_that_is_no_device():
    from qlora_kit.model.loading import resolve_device

    with pytest.raises(UsageError, match="device 'gpu0': not a device"):
        resolve_device("gpu0")


def test_an_unwritable_gguf_cache_is_a_storage_error(tmp_path, tokenizer):
    from qlora_kit.model.gguf import dequantize_gguf
    from qlora_kit.testing import make_tiny_gguf

    make_tiny_gguf(tmp_path / "tiny.gguf", tokenizer)
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    with pytest.raises(
        StorageError, match=r"caching the dequantized GGUF model \(model.cache_dir\) in .*cache"
    ):
        dequantize_gguf(tmp_path / "tiny.gguf", tmp_path / "cache")
