"""Handlers of the model and stage commands: `sora info`, `preprocess`/`refresh`, `pretrain`, `run`,
`finetune`, `evaluate`, `report` (declared in `pipeline.commands`).

Each handler takes the parsed arguments and imports its stage (torch, ray) only when it runs.
"""

from __future__ import annotations

import argparse

from .config.loader import load_config_with_overrides
from .errors import UserError


def _load(args: argparse.Namespace):
    return load_config_with_overrides(args.config, args.set)


def cmd_info(args: argparse.Namespace) -> None:
    """Print parameters and FLOPs/token of model presets."""
    from sora import PRESETS, SoraConfig, count_parameters, flops_per_token

    names = [args.preset] if args.preset else list(PRESETS)
    if args.preset and args.preset not in PRESETS:
        raise UserError(f"unknown model preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    print(f"{'preset':<8}{'params':>16}{'non-embedding':>16}{'FLOPs/token':>16}  (seq_len {args.seq_len})")
    for name in names:
        config = SoraConfig.from_preset(name)
        counts = count_parameters(config)
        flops = flops_per_token(config, args.seq_len)
        print(f"{name:<8}{counts['total']:>16,}{counts['non_embedding']:>16,}{flops:>16.4g}")


def cmd_preprocess(args: argparse.Namespace) -> None:
    """Build or incrementally refresh the dataset of CONFIG (data stage)."""
    from .data.stage import preprocess

    manifest = preprocess(_load(args))
    print(f"dataset {manifest.dataset} v{manifest.version}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    """Pretrain (or resume) the run of CONFIG on its dataset."""
    from .pretrain.launch import pretrain

    result = pretrain(_load(args), restart=args.restart)
    final = result["final"]
    print(
        f"run finished at step {final.get('step')}: loss {final.get('loss', float('nan')):.4f}, "
        f"val {final.get('val_loss', float('nan')):.4f}; export {result['export']}"
    )


def cmd_run(args: argparse.Namespace) -> None:
    """The main job: every stage of CONFIG in order."""
    from .run import run_all

    run_all(_load(args))


def cmd_finetune(args: argparse.Namespace) -> None:
    """Fine-tune on a suite (classify, or a generative one with finetune.task generate) from the pretrained
    export and from scratch (same budget)."""
    from .finetune.launch import finetune
    from .run import record_config
    from .storage import open_store

    config = _load(args)
    record_config(open_store(config.storage.root, config.storage.settings()), config)
    for init, result in finetune(config, restart=args.restart).items():
        state = "already finished" if result.get("skipped") else f"step {result.get('final', {}).get('step')}"
        print(f"fine-tune from {init}: {state}; export {result.get('export')}")


def cmd_distill(args: argparse.Namespace) -> None:
    """Distill the teacher into a smaller student, and train the same student without it (same tokens)."""
    from .distill.launch import distill
    from .run import record_config
    from .storage import open_store

    config = _load(args)
    record_config(open_store(config.storage.root, config.storage.settings()), config)
    for kind, result in distill(config, restart=args.restart).items():
        final = result.get("final", {})
        state = "already finished" if result.get("skipped") else f"step {final.get('step')}"
        if final.get("val_loss") is not None:
            state += f", val loss {final['val_loss']:.4f}"
        print(f"distill {kind}: {state}; export {result.get('export')}")


def cmd_quantize(args: argparse.Namespace) -> None:
    """Quantize the run's export with `quantize.methods` and print what each measured."""
    from .quantize.launch import quantize

    for method, record in quantize(_load(args)).items():
        print(
            f"{method}: {record.checkpoint_uri}  size {record.weight_bytes_after / 1e6:.2f} MB "
            f"(x{record.size_ratio:.2f})  {record.tokens_per_s_after:.1f} tokens/s "
            f"(x{record.speed_ratio:.2f} vs {record.tokens_per_s_before:.1f}, {record.device_name})  "
            f"max |logit diff| {record.logits_max_abs_diff:.4f}"
        )


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate the run's checkpoints with lm-evaluation-harness and print the eval table."""
    from rich.console import Console

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
