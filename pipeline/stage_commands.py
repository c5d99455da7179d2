"""CLI of the last stages: `sora finetune`, `sora evaluate`, `sora report` (registered by cli.py)."""

from __future__ import annotations

import argparse

from rich.console import Console


def cmd_finetune(args: argparse.Namespace) -> None:
    """Fine-tune on the classify suite from the pretrained export and from scratch (same budget)."""
    from .cli import _load
    from .finetune.launch import finetune
    from .run import record_config
    from .storage import open_store

    config = _load(args)
    record_config(open_store(config.storage.root, config.storage.settings()), config)
    for init, result in finetune(config, restart=args.restart).items():
        state = "already finished" if result.get("skipped") else f"step {result.get('final', {}).get('step')}"
        print(f"fine-tune from {init}: {state}; export {result.get('export')}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate the run's checkpoints with lm-evaluation-harness and print the eval table."""
    from .cli import _load
    from .evaluation.checkpoints import evaluate_run
    from .run import print_eval_table, record_config
    from .storage import open_store

    config = _load(args)
    store = open_store(config.storage.root, config.storage.settings())
    record_config(store, config)
    outcome = evaluate_run(config)
    missing = [name for name, result in outcome.items() if result == "missing"]
    print_eval_table(store, config, Console())
    if missing:
        print(f"not evaluated (no checkpoint yet): {', '.join(missing)}")


def cmd_report(args: argparse.Namespace) -> None:
    """Rebuild runs/RUN/report.md and report.html from stored files alone."""
    from .config.run import StorageConfig
    from .errors import UserError
    from .keys import RunKeys
    from .report.build import build_report
    from .storage import open_store

    storage = StorageConfig(root=args.root, endpoint_url=args.endpoint_url)
    store = open_store(storage.root, storage.settings())
    store.check()
    if not store.list(RunKeys(args.run).prefix):
        raise UserError(f"no run {args.run!r} under {storage.root}")
    report = build_report(store, args.run)
    print(f"report: {report['md']} ({report['html']})")


def register(sub, with_config) -> None:
    finetune = with_config(sub.add_parser("finetune", help="fine-tune stage: classify, pretrained vs scratch"))
    finetune.add_argument("--restart", action="store_true", help="restart runs whose checkpoints cannot be resumed")
    finetune.set_defaults(func=cmd_finetune)
    with_config(sub.add_parser("evaluate", help="evaluate the run's checkpoints with lm-eval")).set_defaults(
        func=cmd_evaluate
    )
    report = sub.add_parser("report", help="rebuild a run's report from stored files")
    report.add_argument("run", help="run name (train.run)")
    report.add_argument("--root", default=".sora", help="storage root (default .sora; s3://bucket/prefix)")
    report.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    report.set_defaults(func=cmd_report)
