"""The sub-commands: each a thin wrapper over a library function, returning the exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qlora_kit.errors import UsageError


def _load(args: argparse.Namespace):
    from qlora_kit.config.io import load_config

    return load_config(args.config, args.overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    from qlora_kit.config.io import config_to_yaml

    print(config_to_yaml(_load(args)), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from qlora_kit.inspection import inspect_model

    report = inspect_model(_load(args))
    print(report.to_json() if args.json else report.to_table())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from qlora_kit.planning import plan_run

    plan = plan_run(_load(args), gpu_memory_gib=args.gpu_memory, seq_tokens=args.seq_tokens,
                    host_memory_gib=args.host_memory)  # fmt: skip
    print(plan.to_json() if args.json else plan.to_text() + "\n" + _proposal(plan))
    return 0


def _proposal(plan) -> str:
    """The settings the plan suggests, as overrides a user can paste."""
    s = plan.settings
    # only `auto` checkpoints (or offloads) some layers
    some = s.grad_checkpointing and s.checkpoint_layers is not None
    some_offloaded = s.activation_offload and s.offload_layers is not None
    parts = [f"train.grad_checkpointing={'auto' if some else str(s.grad_checkpointing).lower()}",
             f"train.activation_offload={'auto' if some_offloaded else str(s.activation_offload).lower()}"]  # fmt: skip
    if plan.max_tokens:
        parts.append(f"train.micro_batch_tokens={plan.max_tokens}")
    return "settings: " + " ".join(parts)


def cmd_data(args: argparse.Namespace) -> int:
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
    """3 when a merged export or its GGUF file failed verification (saved, but differs from the trained
    model)."""
    if exported.merge_failed:
        print(f"\n!!! {exported.failure}", file=sys.stderr)
        return 3
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from qlora_kit.errors import InterruptedRun
    from qlora_kit.recipe import run

    try:
        result = run(args.config, args.overrides, overwrite=args.overwrite)
    except InterruptedRun as exc:
        again = " ".join(["qlora-kit train", args.config, *args.overrides, "train.resume=auto"])
        raise InterruptedRun(f"{exc}\n  to resume: {again}") from None
    print(result.summary())
    return _merge_exit_code(result.export)


def cmd_export(args: argparse.Namespace) -> int:
    from qlora_kit.export.from_run import export_run

    overrides = list(args.overrides)
    overrides += [f"export.kind={args.kind}"] if args.kind else []
    overrides += [f"export.merge_base={args.merge_base}"] if args.merge_base else []
    result = export_run(args.output_dir, overrides, device=args.device, allow_code=args.trust_code)
    print(result.summary())
    return _merge_exit_code(result)


def cmd_generate(args: argparse.Namespace) -> int:
    from qlora_kit.cli.predict import sampling_from_args
    from qlora_kit.generation import chat, generate, load_exported

    if not args.prompt and not args.chat:
        raise UsageError("qlora-kit generate: give --prompt TEXT (repeatable) or --chat")
    options = {"max_new_tokens": args.max_new_tokens, "sampling": sampling_from_args(args)}
    loaded = load_exported(args.output_dir, prefer=args.use, device=args.device, allow_code=args.trust_code)
    if args.chat:
        chat(loaded, args.prompt[0] if args.prompt else None, **options)
        return 0
    fields = dict(args.field)
    for prompt in args.prompt:
        print(generate(loaded, prompt, input=args.input, fields=fields, **options))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from qlora_kit.rundir.verify import verify_directory

    report = verify_directory(args.dir, load=not args.no_load, allow_code=args.trust_code, device=args.device)
    print(report.to_text())
    return 0 if report.ok else 1


def cmd_quickstart(args: argparse.Namespace) -> int:
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
