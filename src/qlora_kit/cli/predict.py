"""The sub-commands that run an exported model over a file: ``predict`` and ``eval``; and the sampling
options they share with ``generate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qlora_kit.cli.args import non_negative_float, positive_int
from qlora_kit.errors import UsageError


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-p``, ``--top-k``, ``--repetition-penalty``, ``--seed`` (default: greedy)."""
    parser.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="0 = greedy (the default)"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="sample from the top-p probability mass")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="penalise tokens already in the text (1: off)"
    )
    parser.add_argument("--seed", type=int, help="seed of the sampling: the same seed, the same text")


def sampling_from_args(args: argparse.Namespace):
    """The :class:`~qlora_kit.decoding.Sampling` the options ask for (a bad combination is a UsageError)."""
    from qlora_kit.decoding import Sampling

    return Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    repetition_penalty=args.repetition_penalty, seed=args.seed)  # fmt: skip


def add_file_options(parser: argparse.ArgumentParser) -> None:
    """The export to load and the rows to run it on (``predict`` and ``eval``)."""
    parser.add_argument("output_dir", help="a run's output_dir, or its adapter/ or merged/ directory")
    parser.add_argument("--input", required=True, metavar="FILE", help="rows: json, jsonl, csv or parquet")
    parser.add_argument(
        "--use", choices=["adapter", "merged"], help="which export of a run dir (default: merged if present)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts generated together")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="import the plugins and run the model code that the run's run_config.yaml asks for",
    )


def _prompts(args: argparse.Namespace):
    """The input rows as prompts, read with the run's formatter before any model is loaded."""
    from qlora_kit.config.io import RUN_CONFIG_FILE, load_run_config
    from qlora_kit.formatting import build_formatter
    from qlora_kit.generation import resolve_export_dir
    from qlora_kit.prediction import read_prompts

    if not Path(args.input).is_file():
        raise UsageError(f"qlora-kit {args.command}: --input {args.input}: no such file")
    path, _ = resolve_export_dir(args.output_dir, args.use)
    run_cfg = load_run_config(path / RUN_CONFIG_FILE, allow_code=args.trust_code)
    return read_prompts(args.input, build_formatter(run_cfg.data.formatter), run_cfg.data.source.columns)


def _load(args: argparse.Namespace):
    from qlora_kit.generation import load_exported

    return load_exported(args.output_dir, prefer=args.use, device=args.device, allow_code=args.trust_code)


def cmd_predict(args: argparse.Namespace) -> int:
    from qlora_kit.prediction import predict_file

    sampling = sampling_from_args(args)  # a bad combination, a bad row: before the model loads
    if Path(args.output).is_dir():
        raise UsageError(f"qlora-kit predict: --output {args.output} is a directory; name a file")
    prompts = _prompts(args)
    path = predict_file(_load(args), prompts, args.output, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, sampling=sampling)  # fmt: skip
    print(f"predictions: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qlora_kit.prediction import answered_rows, score_file

    prompts = _prompts(args)
    answered_rows(prompts)  # rows without answers fail before the model loads
    scores = score_file(_load(args), prompts, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, exact_match=not args.no_exact_match)  # fmt: skip
    print(json.dumps(scores.to_dict(), indent=2) if args.json else scores.to_text())
    return 0
