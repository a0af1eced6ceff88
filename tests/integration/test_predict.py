"""`qlora-kit predict` and `eval` on a tiny run trained from ShareGPT rows through the CLI; sampling options
of `generate` and `predict`; the baseline evaluation at step 0."""

from __future__ import annotations

import json

import pytest
import yaml

from qlora_kit.cli import main as cli
from qlora_kit.decoding import Sampling
from qlora_kit.errors import UsageError
from qlora_kit.generation import generate, load_exported
from qlora_kit.prediction import score_file
from qlora_kit.testing import make_alpaca_rows


def _conversation(row, answer=None):
    turns = [{"from": "system", "value": "Answer briefly."}, {"from": "human", "value": row["instruction"]}]
    return {"conversations": [*turns, {"from": "gpt", "value": answer or row["output"]}]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir):
    """A 3-step adapter run on ShareGPT rows with a separate eval file (trained through `qlora-kit train`)."""
    root = tmp_path_factory.mktemp("predict")
    rows = make_alpaca_rows(36, seed=3)
    _jsonl(root / "train.jsonl", [_conversation(r) for r in rows[:28]])
    _jsonl(root / "eval.jsonl", [_conversation(r) for r in rows[28:]])
    config = {
        "output_dir": str(root / "run"),
        "model": {"name_or_path": str(tiny_llama_dir)},
        "quant": {"kind": "bnb_4bit", "compute_dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"source": {"path": str(root / "train.jsonl")}, "formatter": {"kind": "sharegpt"},
                 "eval": {"source": {"path": str(root / "eval.jsonl")}}, "max_length": 128},
        "train": {"max_steps": 3, "micro_batch_size": 4, "optimizer": {"lr": 1e-3}},
        "export": {"kind": "adapter"},
    }  # fmt: skip
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert cli(["train", str(root / "run.yaml")]) == 0
    return root


def test_training_evaluates_the_untrained_model_first(run):
    records = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert records[0] == evals[0]  # before any train record
    assert [r["step"] for r in evals] == [0, 3] and evals[0]["eval_loss"] > evals[1]["eval_loss"]


def test_predict_writes_every_row_with_its_prediction(run, tmp_path, capsys):
    rows = [_conversation(r) for r in make_alpaca_rows(5, seed=9)]
    rows[1]["conversations"] = rows[1]["conversations"][:2]  # ends with the question: no reference answer
    rows[2]["id"] = "keep-me"
    out = tmp_path / "predictions.jsonl"
    source = _jsonl(tmp_path / "in.jsonl", rows)
    args = ["predict", str(run / "run"), "--input", str(source), "--output", str(out),
            "--max-new-tokens", "4", "--batch-size", "1"]  # fmt: skip
    assert cli(args) == 0
    captured = capsys.readouterr()
    assert f"predictions: {out}" in captured.out and "predict: 5/5 rows" in captured.err
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in w.items() if k != "prediction"} for w in written] == rows  # the rows as given
    # the same prompts as `generate` builds from the conversation (the last gpt turn is what is predicted)
    loaded = load_exported(run / "run")
    for row, record in zip(rows, written, strict=True):
        question = row["conversations"][1]["value"]
        history = [{"role": "system", "content": "Answer briefly."}]
        assert record["prediction"] == generate(loaded, question, history=history, max_new_tokens=4)


def test_sampling_is_reproducible_with_a_seed(run, tmp_path, capsys):
    rows = _jsonl(tmp_path / "in.jsonl", [_conversation(r) for r in make_alpaca_rows(4, seed=2)])

    def predict(name, *options):
        out = tmp_path / name
        assert cli(["predict", str(run / "run"), "--input", str(rows), "--output", str(out),
                    "--max-new-tokens", "12", *options]) == 0  # fmt: skip
        return [json.loads(line)["prediction"] for line in out.read_text().splitlines()]

    sampled = ["--temperature", "1.5", "--top-k", "100", "--top-p", "0.95", "--repetition-penalty", "1.1"]
    first = predict("a.jsonl", *sampled, "--seed", "3")
    assert predict("b.jsonl", *sampled, "--seed", "3") == first
    assert predict("c.jsonl", *sampled, "--seed", "4") != first
    assert predict("d.jsonl") != first  # greedy (the default) is another text
    capsys.readouterr()

    prompt = ["generate", str(run / "run"), "--prompt", "Say what the cat paints.", "--max-new-tokens", "12"]
    assert cli([*prompt, "--temperature", "1.5", "--seed", "5"]) == 0
    once = capsys.readouterr().out
    assert cli([*prompt, "--temperature", "1.5", "--seed", "5"]) == 0
    assert capsys.readouterr().out == once
    assert cli([*prompt, "--top-p", "0.5"]) == 2
    assert "set temperature > 0 (0 is greedy)" in capsys.readouterr().err
    with pytest.raises(UsageError, match="top_p 1.5 must be in"):
        Sampling(temperature=1.0, top_p=1.5)


def test_a_row_without_the_prompt_field_is_named_and_nothing_is_written(run, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the rows were checked")

    monkeypatch.setattr("qlora_kit.generation.load_exported", no_model)
    rows = [_conversation(r) for r in make_alpaca_rows(3)]
    rows[2] = {"question": "Where is the prompt?"}
    out = tmp_path / "predictions.jsonl"
    source = _jsonl(tmp_path / "in.jsonl", rows)
    assert cli(["predict", str(run / "run"), "--input", str(source), "--output", str(out)]) == 2
    assert f"{source} line 3: field 'conversations': missing" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [source]
    assert (
        cli(["predict", str(run / "run"), "--input", str(tmp_path / "none.jsonl"), "--output", str(out)]) == 2
    )
    assert f"--input {tmp_path / 'none.jsonl'}: no such file" in capsys.readouterr().err


def test_eval_scores_loss_like_training_and_exact_match(run, tmp_path, capsys, monkeypatch):
    # the run's own eval file: the same rows, encoding and model as the trainer's last evaluation
    assert (
        cli(["eval", str(run / "run"), "--input", str(run / "eval.jsonl"), "--json", "--no-exact-match"]) == 0
    )
    scores = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert (scores["rows"], scores["answered"], scores["exact_match"]) == (8, 8, None)
    assert scores["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)

    # exact match: two rows whose answer is the model's own greedy prediction, two that are wrong, one without
    rows = [_conversation(r) for r in make_alpaca_rows(4, seed=11)]
    out = tmp_path / "predictions.jsonl"
    questions = _jsonl(tmp_path / "q.jsonl", rows)
    assert cli(["predict", str(run / "run"), "--input", str(questions), "--output", str(out),
                "--max-new-tokens", "6", "--batch-size", "1"]) == 0  # fmt: skip
    predictions = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
    assert all(p.strip() for p in predictions[:2]), predictions
    answered = [
        _conversation(r, f"  {p} ") for r, p in zip(make_alpaca_rows(2, seed=11), predictions, strict=False)
    ]
    wrong = [_conversation(r, "certainly not this") for r in make_alpaca_rows(4, seed=11)[2:]]
    asked = {"conversations": rows[0]["conversations"][:2]}
    source = _jsonl(tmp_path / "scored.jsonl", [*answered, *wrong, asked])
    assert (
        cli(["eval", str(run / "run"), "--input", str(source), "--max-new-tokens", "6", "--batch-size", "1"])
        == 0
    )
    text = capsys.readouterr().out
    assert "rows         5 (4 with a reference answer)" in text and "exact match  50.0% (2/4)" in text
    scores = score_file(load_exported(run / "run"), source, max_new_tokens=6, batch_size=1)
    assert (scores.exact_matches, scores.answered) == (2, 4) and scores.eval_tokens > 0

    monkeypatch.setattr("qlora_kit.generation.load_exported", None)  # rows without answers fail first
    assert cli(["eval", str(run / "run"), "--input", str(_jsonl(tmp_path / "none.jsonl", [asked]))]) == 2
    assert "no row has a reference answer" in capsys.readouterr().err
