"""The `sora` command line: parses arguments and calls one library function per subcommand.

Heavy imports (torch, ray) happen inside the subcommand, so `sora --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import UserError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sora-pipeline")
    except PackageNotFoundError:
        return "unknown"


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


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (dotted key, YAML value), got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _load(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, _parse_overrides(args.set))


def cmd_preprocess(args: argparse.Namespace) -> None:
    """Build or incrementally refresh the dataset of CONFIG (data stage)."""
    from .data.stage import preprocess

    manifest = preprocess(_load(args))
    print(f"dataset {manifest['dataset']} v{manifest['version']}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    """Pretrain (or resume) the run of CONFIG on its dataset."""
    from .train.launch import pretrain

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


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="run config (YAML), e.g. configs/default.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set data.seq_len=512 (repeatable)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sora",
        description="Pretrain Sora language models: preprocess -> pretrain -> finetune -> evaluate -> report.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="parameters and FLOPs/token of the model presets")
    info.add_argument("preset", nargs="?", help="one preset (default: all)")
    info.add_argument("--seq-len", type=int, default=2048, help="sequence length for FLOPs/token")
    info.set_defaults(func=cmd_info)

    for name, help_text in (
        ("preprocess", "data stage: corpora -> versioned Arrow shards + manifest"),
        ("refresh", "incremental data refresh: only new/changed sources, no-op without changes"),
    ):
        _with_config(sub.add_parser(name, help=help_text)).set_defaults(func=cmd_preprocess)
    pretrain_parser = _with_config(sub.add_parser("pretrain", help="pretrain stage: Ray Train + DeepSpeed, resumable"))
    pretrain_parser.add_argument(
        "--restart",
        action="store_true",
        help="train from step 0 although the run has committed checkpoints that cannot be resumed from",
    )
    pretrain_parser.set_defaults(func=cmd_pretrain)
    _with_config(sub.add_parser("run", help="the main job: all stages of the config in order")).set_defaults(
        func=cmd_run
    )
    from .ops.commands import register as register_ops

    register_ops(sub, _with_config)  # plan, submit, jobs
    from .stage_commands import register as register_stages

    register_stages(sub, _with_config)  # finetune, evaluate, report
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], object] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    from .ops.job_env import install as install_job_credentials

    install_job_credentials()  # inside a submitted job: its AWS credentials file, if it carries one
    try:
        status = func(args)
    except UserError as error:
        print(f"sora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sora {args.command}: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
