"""The argument parser of every sub-command."""

from __future__ import annotations

import argparse

from qlora_kit.cli import commands as cmd
from qlora_kit.cli import predict
from qlora_kit.cli.args import Parser, name_value, positive_float, positive_int


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config")
    # default=[]: argparse otherwise lists an empty `nargs="*"` positional as a missing required argument
    parser.add_argument(
        "overrides", nargs="*", default=[], help="dotted overrides, e.g. train.optimizer.lr=1e-4"
    )


class _Version(argparse.Action):
    """``--version``: the library's version and those of the packages a run depends on (read from the
    installed metadata when asked, so other commands do not pay for it)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from qlora_kit import __version__
        from qlora_kit.config.io import package_versions

        others = ", ".join(f"{name} {v}" for name, v in package_versions().items() if name != "qlora_kit")
        print(f"qlora-kit {__version__} ({others})")
        parser.exit()


def _trust_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="import the plugins and run the model code that the run's run_config.yaml asks for",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = Parser(prog="qlora-kit", description="QLoRA fine-tuning toolkit")
    parser.add_argument(
        "--version", action=_Version, help="print the versions of qlora-kit and its libraries"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show other libraries' warnings and progress bars"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="print the resolved config, or every error with its path")
    _with_config(p)
    p.set_defaults(func=cmd.cmd_validate)

    p = sub.add_parser("schema", help="print the config's JSON schema, or every registered kind")
    p.add_argument("--kinds", action="store_true", help="list the registered kinds of every component")
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE", help="import a plugin module first"
    )
    p.set_defaults(func=cmd.cmd_schema)

    p = sub.add_parser("inspect", help="quantization and parameter report for the config's model")
    _with_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd.cmd_inspect)

    p = sub.add_parser(
        "plan", help="predict a training step's GPU memory by component and its speed, from config.json alone"
    )
    _with_config(p)
    p.add_argument("--gpu-memory", type=positive_float, metavar="GiB", help="judge against this much GPU memory "
                   "(default: this machine's first GPU)")  # fmt: skip
    p.add_argument("--host-memory", type=positive_float, metavar="GiB", help="judge activation offload's pinned memory "
                   "against this much host memory, at most 70%% of it (default: this machine's, when "
                   "--gpu-memory is not given and it has a GPU)")  # fmt: skip
    p.add_argument(
        "--seq-tokens", type=positive_int, metavar="N", help="tokens per row (default: data.max_length)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd.cmd_plan)

    p = sub.add_parser("data", help="load, format and tokenize the config's data; print the data report")
    _with_config(p)
    p.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing"
    )
    p.add_argument(
        "--output", metavar="DIR", help="also write data_report.json/.txt and data_lengths.png here"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd.cmd_data)

    p = sub.add_parser("train", help="run the whole pipeline: load, data report, adapt, train, export")
    _with_config(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in output_dir (its run files only)"
    )
    p.set_defaults(func=cmd.cmd_train)

    p = sub.add_parser(
        "export", help="export a finished run again (adapter, verified merged model, or GGUF file)"
    )
    p.add_argument("output_dir", help="the run's output_dir (holds run_config.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides of the export section, e.g. export.dtype=float16 (before any --option)",
    )
    p.add_argument("--kind", choices=["adapter", "merged", "gguf"], help="shortcut for export.kind=...")
    p.add_argument(
        "--merge-base", choices=["original", "dequantized"], help="shortcut for export.merge_base=..."
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    _trust_code(p)
    p.set_defaults(func=cmd.cmd_export)

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
        type=name_value,
        metavar="NAME=VALUE",
        help="another field of a custom formatter",
    )
    p.add_argument(
        "--chat", action="store_true", help="a conversation on stdin (chatml / chat_template runs)"
    )
    p.add_argument(
        "--use", choices=["adapter", "merged"], help="which export of a run dir (default: merged if present)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    predict.add_sampling_options(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    _trust_code(p)
    p.set_defaults(func=cmd.cmd_generate)

    p = sub.add_parser(
        "predict", help="answer every row of a file with an exported run; write rows + predictions"
    )
    predict.add_file_options(p)
    p.add_argument(
        "--output", required=True, metavar="FILE", help="JSON lines: each input row + `prediction`"
    )
    predict.add_sampling_options(p)
    p.set_defaults(func=predict.cmd_predict)

    p = sub.add_parser(
        "eval", help="loss, perplexity and exact match of an exported run on rows with answers"
    )
    predict.add_file_options(p)
    p.add_argument("--no-exact-match", action="store_true", help="only loss and perplexity (no generation)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=predict.cmd_eval)

    p = sub.add_parser(
        "verify", help="check a run, export or checkpoint dir against its manifest; load its model"
    )
    p.add_argument("dir", help="a run's output_dir, its adapter/ or merged/, or a checkpoint")
    p.add_argument("--no-load", action="store_true", help="only check files, do not load the model")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:0 when available)")
    _trust_code(p)
    p.set_defaults(func=cmd.cmd_verify)

    p = sub.add_parser(
        "quickstart", help="fine-tune SmolLM2-135M offline on a generated task; before/after report"
    )
    p.add_argument("--output-dir", default="runs/quickstart")
    p.add_argument(
        "--steps", type=positive_int, help="optimizer steps (default: the quickstart's full length)"
    )
    p.add_argument("--train-rows", type=positive_int, help="generated training rows")
    p.add_argument("--eval-rows", type=positive_int, help="held-out rows scored before and after")
    p.add_argument("--export", choices=["adapter", "merged"], default="merged")
    p.set_defaults(func=cmd.cmd_quickstart)
    for command in sub.choices.values():  # `--debug`, `-v` also after the sub-command, where users type them
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser
