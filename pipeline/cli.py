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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sora",
        description="Pretrain Sora language models: preprocess -> pretrain -> evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="parameters and FLOPs/token of the model presets")
    info.add_argument("preset", nargs="?", help="one preset (default: all)")
    info.add_argument("--seq-len", type=int, default=2048, help="sequence length for FLOPs/token")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], object] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        func(args)
    except UserError as error:
        print(f"sora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sora {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
