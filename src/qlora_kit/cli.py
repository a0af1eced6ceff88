"""The `qlora-kit` command line. Each sub-command is a thin wrapper over a library function.

Errors caused by input (:class:`~qlora_kit.errors.QloraKitError`) print one clear message and exit 2,
without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from qlora_kit.errors import QloraKitError


def _load(args: argparse.Namespace):
    from qlora_kit.config_io import load_config

    return load_config(args.config, args.overrides)


def _cmd_validate(args: argparse.Namespace) -> int:
    from qlora_kit.config_io import config_to_yaml

    print(config_to_yaml(_load(args)), end="")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from qlora_kit.config import RunConfig

    print(json.dumps(RunConfig.model_json_schema(), indent=2))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from qlora_kit.inspect import inspect_model

    report = inspect_model(_load(args))
    print(report.to_json() if args.json else report.to_table())
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from qlora_kit.data import build_datasets, build_formatter
    from qlora_kit.loading import ModelLoader

    cfg = _load(args)
    data_cfg = cfg.data.model_copy(update={"skip_bad_rows": True}) if args.skip_bad_rows else cfg.data
    tokenizer = ModelLoader(cfg.model, cfg.quant, device="cpu").load_tokenizer()
    bundle = build_datasets(
        data_cfg,
        build_formatter(data_cfg.formatter),
        tokenizer,
        micro_batch_size=cfg.train.micro_batch_size,
        output_dir=args.output,
    )
    print(bundle.report.to_json() if args.json else bundle.report.to_text())
    return 0


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.optimizer.lr=1e-4")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="qlora-kit", description="QLoRA fine-tuning toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="print the resolved config, or every error with its path")
    _with_config(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("schema", help="print the config's JSON schema")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("inspect", help="quantization and parameter report for the config's model")
    _with_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("data", help="load, format and tokenize the config's data; print the data report")
    _with_config(p)
    p.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing"
    )
    p.add_argument(
        "--output", metavar="DIR", help="also write data_report.json/.txt and data_lengths.png here"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlora-kit` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except QloraKitError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
