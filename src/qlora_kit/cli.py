"""The `qlora-kit` command line. Each sub-command is a thin wrapper over a library function.

Errors caused by input (:class:`~qlora_kit.errors.QloraKitError`), malformed arguments included, print
one line ``error: <message>`` and exit non-zero (``exc.exit_code``), without a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from qlora_kit.errors import QloraKitError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line, like every input error) instead of printing
    the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        extra = message.partition("unrecognized arguments: ")[2].split()
        if any("=" in arg and not arg.startswith("-") for arg in extra):
            message += " (dotted overrides go before any --option)"
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NAME=VALUE")
    return name.strip(), value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def _load(args: argparse.Namespace):
    from qlora_kit.config.io import load_config

    return load_config(args.config, args.overrides)


def _cmd_validate(args: argparse.Namespace) -> int:
    from qlora_kit.config.io import config_to_yaml

    print(config_to_yaml(_load(args)), end="")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from qlora_kit.config import RunConfig
    from qlora_kit.registry import REGISTRIES, import_plugins

    import_plugins(args.plugin)
    if not args.kinds:
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
        return 0
    for name, registry in REGISTRIES.items():
        print(f"{name}:")
        for entry in registry.entries():
            options = [f for f in entry.config.model_fields if f != "kind"]
            print(f"  {entry.name:<20} {entry.summary}" + (f"  [{', '.join(options)}]" if options else ""))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from qlora_kit.inspection import inspect_model

    report = inspect_model(_load(args))
    print(report.to_json() if args.json else report.to_table())
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from qlora_kit.data import build_datasets, build_formatter
    from qlora_kit.model.loading import ModelLoader

    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"qlora-kit data: --output {args.output}: not a directory")
    cfg = _load(args)
    data_cfg = cfg.data.model_copy(update={"skip_bad_rows": True}) if args.skip_bad_rows else cfg.data
    loader = ModelLoader(cfg.model, cfg.quant, device="cpu")
    if cfg.model.tokenizer is None:  # the model's own files are read anyway: check max_length against it
        loader.check(max_length=cfg.data.max_length)
    tokenizer = loader.load_tokenizer()
    bundle = build_datasets(
        data_cfg,
        build_formatter(data_cfg.formatter, tokenizer),
        tokenizer,
        micro_batch_size=cfg.train.micro_batch_size,
        output_dir=args.output,
    )
    print(bundle.report.to_json() if args.json else bundle.report.to_text())
    return 0


def _merge_exit_code(exported) -> int:
    """3 when a merged export failed verification (the model was saved, but differs from the trained one)."""
    if exported.merge_failed:
        print(f"\n!!! {exported.merge_report['message']}", file=sys.stderr)
        return 3
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from qlora_kit.errors import InterruptedRun
    from qlora_kit.recipe import run

    try:
        result = run(args.config, args.overrides, overwrite=args.overwrite)
    except InterruptedRun as exc:
        again = " ".join(["qlora-kit train", args.config, *args.overrides, "train.resume=auto"])
        raise InterruptedRun(f"{exc}\n  to resume: {again}") from None
    print(result.summary())
    return _merge_exit_code(result.export)


def _cmd_export(args: argparse.Namespace) -> int:
    from qlora_kit.export.from_run import export_run

    overrides = list(args.overrides)
    overrides += [f"export.kind={args.kind}"] if args.kind else []
    overrides += [f"export.merge_base={args.merge_base}"] if args.merge_base else []
    result = export_run(args.output_dir, overrides, device=args.device, allow_code=args.trust_code)
    print(result.summary())
    return _merge_exit_code(result)


def _cmd_generate(args: argparse.Namespace) -> int:
    from qlora_kit.generation import chat, generate, load_exported

    if not args.prompt and not args.chat:
        raise UsageError("qlora-kit generate: give --prompt TEXT (repeatable) or --chat")
    loaded = load_exported(args.output_dir, prefer=args.use, device=args.device, allow_code=args.trust_code)
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.chat:
        chat(loaded, args.prompt[0] if args.prompt else None, **options)
        return 0
    fields = dict(args.field)
    for prompt in args.prompt:
        print(generate(loaded, prompt, input=args.input, fields=fields, **options))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from qlora_kit.rundir.verify import verify_directory

    report = verify_directory(args.dir, load=not args.no_load, allow_code=args.trust_code, device=args.device)
    print(report.to_text())
    return 0 if report.ok else 1


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from qlora_kit.quickstart import quickstart

    result = quickstart(
        output_dir=args.output_dir,
        steps=args.steps,
        train_rows=args.train_rows,
        eval_rows=args.eval_rows,
        export=args.export,
    )
    print(result.report())
    return _merge_exit_code(result.run.export)


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.optimizer.lr=1e-4")


def _trust_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="import the plugins and run the model code that the run's run_config.yaml asks for",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = _Parser(prog="qlora-kit", description="QLoRA fine-tuning toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="print the resolved config, or every error with its path")
    _with_config(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("schema", help="print the config's JSON schema, or every registered kind")
    p.add_argument("--kinds", action="store_true", help="list the registered kinds of every component")
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE", help="import a plugin module first"
    )
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

    p = sub.add_parser("train", help="run the whole pipeline: load, data report, adapt, train, export")
    _with_config(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in output_dir (its run files only)"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="export a finished run again (adapter, or a verified merged model)")
    p.add_argument("output_dir", help="the run's output_dir (holds run_config.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides of the export section, e.g. export.dtype=float16 (before any --option)",
    )
    p.add_argument("--kind", choices=["adapter", "merged"], help="shortcut for export.kind=...")
    p.add_argument(
        "--merge-base", choices=["original", "dequantized"], help="shortcut for export.merge_base=..."
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    _trust_code(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("generate", help="generate from an exported run in its training prompt format")
    p.add_argument("output_dir", help="a run's output_dir, or its adapter/ or merged/ directory")
    p.add_argument(
        "--prompt", action="append", default=[], help="the instruction / user message (repeatable)"
    )
    p.add_argument("--input", help="the Alpaca `input` (context) field")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        type=_name_value,
        metavar="NAME=VALUE",
        help="another field of a custom formatter",
    )
    p.add_argument(
        "--chat", action="store_true", help="a conversation on stdin (chatml / chat_template runs)"
    )
    p.add_argument(
        "--use", choices=["adapter", "merged"], help="which export of a run dir (default: merged if present)"
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--temperature", type=_non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    _trust_code(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "verify", help="check a run, export or checkpoint dir against its manifest; load its model"
    )
    p.add_argument("dir", help="a run's output_dir, its adapter/ or merged/, or a checkpoint")
    p.add_argument("--no-load", action="store_true", help="only check files, do not load the model")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    _trust_code(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "quickstart", help="fine-tune SmolLM2-135M offline on a generated task; before/after report"
    )
    p.add_argument("--output-dir", default="runs/quickstart")
    p.add_argument(
        "--steps", type=_positive_int, help="optimizer steps (default: the quickstart's full length)"
    )
    p.add_argument("--train-rows", type=_positive_int, help="generated training rows")
    p.add_argument("--eval-rows", type=_positive_int, help="held-out rows scored before and after")
    p.add_argument("--export", choices=["adapter", "merged"], default="merged")
    p.set_defaults(func=_cmd_quickstart)
    for command in sub.choices.values():  # `--debug` also after the sub-command, where users type it
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _setup_logging() -> None:
    """The library's own messages (a run resumed, a lock taken over, a schedule changed) on stderr."""
    import logging

    library = logging.getLogger("qlora_kit")
    if not library.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
        library.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlora-kit` console script."""
    parser = build_parser()
    debug = False
    _setup_logging()
    try:
        args = parser.parse_args(argv)
        debug = args.debug
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except QloraKitError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
