"""The command table (`pipeline.commands`) is the one declaration of the `sora` commands.

The parser has exactly its commands, `sora submit --stage` accepts exactly its submittable ones,
`pipeline.ops` does not import the CLI, and nothing reads argparse's private attributes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.commands import COMMANDS, DEFAULT_STAGE, resolve, stage_names, training_names
from pipeline.config.loader import parse_overrides
from pipeline.errors import UserError
from pipeline.ops import submit

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


def every_command():
    for command in COMMANDS:
        yield (command.name,), command
        for action in command.subcommands:
            yield (command.name, action.name), action


def test_every_command_is_in_the_parser_and_its_help():
    parser = build_parser()
    top_help = parser.format_help()
    for path, command in every_command():
        assert command.name in top_help or len(path) > 1, path
        argv = list(path)
        if command.takes_config:
            argv.append("default")
        argv += [a.flags[0] for a in command.arguments if not a.flags[0].startswith("-") and a.flags[0] != "preset"]
        if command.subcommands:
            with pytest.raises(SystemExit):  # an action is required
                parser.parse_args(argv)
            continue
        args = parser.parse_args(argv)
        assert args.command == path[0] and args.handler == command.handler
        assert callable(resolve(command.handler)), command.handler
    subcommands = {c.name for c in COMMANDS}
    assert subcommands == {"info", "preprocess", "refresh", "pretrain", "run", "plan", "submit", "jobs",
                           "finetune", "evaluate", "report", "distill", "quantize"}  # fmt: skip


def test_submit_stage_accepts_exactly_the_submittable_commands(capsys):
    parser = build_parser()
    submittable = {c.name for c in COMMANDS if c.submittable}
    assert submittable == {"run", "preprocess", "refresh", "pretrain", "finetune", "evaluate", "distill", "quantize"}
    assert stage_names()[0] == DEFAULT_STAGE and set(stage_names()) == submittable
    assert submit.STAGES == stage_names() and set(training_names()) == {"run", "pretrain"}
    assert parser.parse_args(["submit", "default"]).stage == DEFAULT_STAGE
    for path, _ in every_command():
        name = path[-1]
        if name in submittable:
            assert parser.parse_args(["submit", "default", "--stage", name]).stage == name
            submit._check_stage(name)
        else:
            with pytest.raises(SystemExit):
                parser.parse_args(["submit", "default", "--stage", name])
            with pytest.raises(UserError, match="choose one of run, preprocess"):
                submit._check_stage(name)
    assert "{run,preprocess,refresh,pretrain,finetune,distill,quantize,evaluate}" in capsys.readouterr().err


def imported_modules(tree: ast.Module, package: str) -> set[str]:
    """Absolute names of what a module of `package` imports (`from .. import cli` -> pipeline.cli)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_ops_does_not_import_the_cli():
    for path in sorted((PIPELINE / "ops").glob("*.py")):
        modules = imported_modules(ast.parse(path.read_text(), filename=str(path)), "pipeline.ops")
        assert "pipeline.commands" in modules or path.name != "submit.py"  # the scan resolves relative imports
        assert not any(m == "pipeline.cli" or m.startswith("pipeline.cli.") for m in modules), path


def test_no_argparse_internals():
    internals = re.compile(r"(?<!\w)(_subparsers|_group_actions|_SubParsersAction|_actions)\b")  # not add_subparsers
    for path in sorted(PIPELINE.rglob("*.py")):
        found = internals.findall(path.read_text())
        assert not found, (path, found)


def test_overrides_and_errors_are_unchanged(capsys):
    assert parse_overrides(["data.seq_len=512", "train.use_gpu=false"]) == {"data.seq_len": 512, "train.use_gpu": False}
    with pytest.raises(UserError, match="--set expects KEY=VALUE"):
        parse_overrides(["data.seq_len"])
    assert main(["plan", "default", "--set", "oops"]) == 2
    assert "sora plan: error: --set expects KEY=VALUE" in capsys.readouterr().err
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["jobs"])  # an action is required
    assert exit_info.value.code == 2
