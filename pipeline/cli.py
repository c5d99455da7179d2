"""The `sora` command line: builds the argument parser from the command table and runs one handler.

Every command is declared once, in `pipeline.commands`; its handler is imported only when it runs
(heavy imports such as torch and ray happen there), so `sora --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import COMMANDS, Command, resolve
from .errors import UserError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sora-pipeline")
    except PackageNotFoundError:
        return "unknown"


def _add_commands(
    parser: argparse.ArgumentParser, commands: Sequence[Command], dest: str, metavar: str, required: bool
) -> None:
    """One subparser per command of the table, with its arguments and handler (recursively for its actions)."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar, required=required)
    for command in commands:
        child = sub.add_parser(command.name, help=command.help)
        for argument in command.all_arguments():
            child.add_argument(*argument.flags, **argument.kwargs)
        if command.subcommands:
            _add_commands(child, command.subcommands, f"{command.name}_command", command.metavar, required=True)
        else:
            child.set_defaults(handler=command.handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sora",
        description="Pretrain Sora language models: preprocess -> pretrain -> finetune -> evaluate -> report.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_commands(parser, COMMANDS, "command", "COMMAND", required=False)  # no command: print the help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: str | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from .ops.job_env import install as install_job_credentials

    install_job_credentials()  # inside a submitted job: its AWS credentials file, if it carries one
    from .console_log import library_output_to_log

    try:
        with library_output_to_log(args.command):  # the terminal shows Sora's lines and errors
            status = resolve(handler)(args)
    except UserError as error:
        print(f"sora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sora {args.command}: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
