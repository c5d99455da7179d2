"""The `sora` commands, each declared once: name, help, arguments, handler and what it may be used for.

`pipeline.cli` builds the argument parser from `COMMANDS`, and `sora submit --stage` accepts the
`submittable` ones. This module is a leaf: it imports nothing from the stages or the CLI, and a
handler is a "module:function" string imported only when its command runs, so `sora --help` stays
instant (torch and ray are imported inside the handlers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_STAGE = "run"  # what `sora submit` runs without --stage


@dataclass(frozen=True)
class Argument:
    """One `add_argument` call: its flags (or positional name) and keyword arguments."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """One subcommand of `sora` (or of a command with `subcommands`, such as `sora jobs`).

    `takes_config`: the command reads a run config (CONFIG positional plus repeatable `--set`), declared
    before its own `arguments`. `submittable`: `sora submit --stage NAME` may run it on a cluster.
    `trains`: it trains on GPUs, so `sora submit` checks its memory plan first.
    """

    name: str
    help: str
    handler: str | None = None  # "module:function" taking the parsed argparse.Namespace
    arguments: tuple[Argument, ...] = ()
    takes_config: bool = False
    submittable: bool = False
    trains: bool = False
    subcommands: tuple[Command, ...] = ()
    metavar: str = "ACTION"  # of the subcommands, in help

    def __post_init__(self) -> None:
        if (self.handler is None) == (not self.subcommands):
            raise ValueError(f"command {self.name!r} needs exactly one of a handler or subcommands")

    def all_arguments(self) -> tuple[Argument, ...]:
        """Its arguments in parser order: CONFIG and --set first when it takes a config."""
        return (CONFIG_ARGUMENTS if self.takes_config else ()) + self.arguments


def resolve(handler: str) -> Callable[..., Any]:
    """The function named by a handler string "package.module:function" (imports the module)."""
    module, _, function = handler.partition(":")
    return getattr(importlib.import_module(module), function)


def stage_names() -> tuple[str, ...]:
    """The commands `sora submit --stage` accepts: the default first, then in table order."""
    names = [command.name for command in COMMANDS if command.submittable]
    return tuple(sorted(names, key=lambda name: name != DEFAULT_STAGE))


def training_names() -> tuple[str, ...]:
    """The commands that train, for which `sora submit` checks the GPU memory plan."""
    return tuple(command.name for command in COMMANDS if command.trains)


class StageNames:
    """`choices` of `sora submit --stage`: the submittable commands, read from the table when used."""

    def __iter__(self) -> Iterator[str]:
        return iter(stage_names())

    def __contains__(self, name: object) -> bool:
        return name in stage_names()


CONFIG_ARGUMENTS = (
    Argument(("config",), {"help": "run config (YAML), e.g. configs/default.yaml"}),
    Argument(
        ("--set",),
        {
            "action": "append",
            "default": [],
            "metavar": "KEY=VALUE",
            "help": "override a config field, e.g. --set data.seq_len=512 (repeatable)",
        },
    ),
)
ADDRESS = Argument(
    ("--address",), {"help": "Ray Jobs API (dashboard) URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)"}
)
JOB_ID = Argument(("job_id",), {"help": "submission id printed by sora submit"})

_STAGE_HANDLERS = "pipeline.stage_commands"
_OPS_HANDLERS = "pipeline.ops.commands"

COMMANDS: tuple[Command, ...] = (
    Command(
        "info",
        "parameters and FLOPs/token of the model presets",
        f"{_STAGE_HANDLERS}:cmd_info",
        (
            Argument(("preset",), {"nargs": "?", "help": "one preset (default: all)"}),
            Argument(("--seq-len",), {"type": int, "default": 2048, "help": "sequence length for FLOPs/token"}),
        ),
    ),
    Command(
        "preprocess",
        "data stage: corpora -> versioned Arrow shards + manifest",
        f"{_STAGE_HANDLERS}:cmd_preprocess",
        takes_config=True,
        submittable=True,
    ),
    Command(
        "refresh",
        "incremental data refresh: only new/changed sources, no-op without changes",
        f"{_STAGE_HANDLERS}:cmd_preprocess",
        takes_config=True,
        submittable=True,
    ),
    Command(
        "pretrain",
        "pretrain stage: Ray Train + DeepSpeed, resumable",
        f"{_STAGE_HANDLERS}:cmd_pretrain",
        (
            Argument(
                ("--restart",),
                {
                    "action": "store_true",
                    "help": "train from step 0 although the run has committed checkpoints that cannot be resumed from",
                },
            ),
        ),
        takes_config=True,
        submittable=True,
        trains=True,
    ),
    Command(
        "run",
        "the main job: all stages of the config in order",
        f"{_STAGE_HANDLERS}:cmd_run",
        takes_config=True,
        submittable=True,
        trains=True,
    ),
    Command(
        "plan",
        "per-GPU memory of each parallelism strategy; refuses plans that cannot fit",
        f"{_OPS_HANDLERS}:cmd_plan",
        (
            Argument(
                ("--gpu-memory",),
                {"type": float, "default": 80.0, "metavar": "GIB", "help": "memory of one GPU (default 80)"},
            ),
            Argument(
                ("--gpus-per-node",), {"type": int, "default": 8, "help": "GPUs per node, for CPU memory of offload"}
            ),
        ),
        takes_config=True,
    ),
    Command(
        "submit",
        "run a stage of CONFIG on a Ray cluster (Ray Jobs API)",
        f"{_OPS_HANDLERS}:cmd_submit",
        (
            Argument(
                ("--stage",),
                {
                    "default": DEFAULT_STAGE,
                    "choices": StageNames(),
                    "help": f"subcommand the job runs (default: {DEFAULT_STAGE})",
                },
            ),
            ADDRESS,
            Argument(
                ("--follow",),
                {"action": "store_true", "help": "stream the logs; exit 0 if the job succeeds, 1 if not"},
            ),
            Argument(
                ("--env",),
                {
                    "action": "append",
                    "default": [],
                    "metavar": "NAME",
                    "help": "pass this (non-secret) environment variable",
                },
            ),
            Argument(
                ("--pass-credentials",),
                {
                    "action": "store_true",
                    "help": "ship this environment's AWS credentials with the job (never in job info or logs); "
                    "by default the cluster uses its own",
                },
            ),
            Argument(
                ("--allow-local-storage",),
                {
                    "action": "store_true",
                    "help": "accept a local storage root on a multi-node or remote cluster "
                    "(a filesystem shared by all nodes)",
                },
            ),
            Argument(("--job-id",), {"help": "submission id (default: sora-STAGE-TIME-RANDOM)"}),
            Argument(("--entrypoint-num-cpus",), {"type": float, "help": "CPUs reserved for the job's driver"}),
            Argument(("--entrypoint-num-gpus",), {"type": float, "help": "GPUs reserved for the job's driver"}),
            Argument(
                ("--entrypoint-memory",),
                {"type": int, "metavar": "BYTES", "help": "memory reserved for the driver"},
            ),
            Argument(
                ("--gpu-memory",),
                {"type": float, "default": 80.0, "metavar": "GIB", "help": "GPU memory for the plan check"},
            ),
        ),
        takes_config=True,
    ),
    Command(
        "jobs",
        "list, inspect, follow or stop jobs on a Ray cluster",
        subcommands=(
            Command("list", "every job of the cluster", f"{_OPS_HANDLERS}:cmd_jobs_list", (ADDRESS,)),
            Command(
                "status",
                "status of a job; a failed one with its last log lines",
                f"{_OPS_HANDLERS}:cmd_jobs_status",
                (
                    Argument(("--json",), {"action": "store_true", "help": "the whole job info as JSON"}),
                    JOB_ID,
                    ADDRESS,
                ),
            ),
            Command(
                "logs",
                "logs of a job",
                f"{_OPS_HANDLERS}:cmd_jobs_logs",
                (
                    Argument(
                        ("--follow",),
                        {"action": "store_true", "help": "stream until the job ends; exit with its status"},
                    ),
                    JOB_ID,
                    ADDRESS,
                ),
            ),
            Command(
                "stop",
                "stop a job and wait until it has stopped",
                f"{_OPS_HANDLERS}:cmd_jobs_stop",
                (
                    Argument(
                        ("--timeout",),
                        {"type": float, "default": 60.0, "help": "seconds to wait for the stop (default 60)"},
                    ),
                    JOB_ID,
                    ADDRESS,
                ),
            ),
        ),
    ),
    Command(
        "finetune",
        "fine-tune stage: classify or generate (finetune.task), pretrained vs scratch",
        f"{_STAGE_HANDLERS}:cmd_finetune",
        (
            Argument(
                ("--restart",),
                {"action": "store_true", "help": "restart runs whose checkpoints cannot be resumed"},
            ),
        ),
        takes_config=True,
        submittable=True,
    ),
    Command(
        "distill",
        "distill stage: a smaller student with KL to the frozen teacher, vs the same student without it",
        f"{_STAGE_HANDLERS}:cmd_distill",
        (
            Argument(
                ("--restart",),
                {"action": "store_true", "help": "restart runs whose checkpoints cannot be resumed"},
            ),
        ),
        takes_config=True,
        submittable=True,
    ),
    Command(
        "quantize",
        "weight-only int8/int4 copies of the run's export (torchao): size and tokens/s before and after",
        f"{_STAGE_HANDLERS}:cmd_quantize",
        takes_config=True,
        submittable=True,
    ),
    Command(
        "evaluate",
        "evaluate the run's checkpoints with lm-eval",
        f"{_STAGE_HANDLERS}:cmd_evaluate",
        takes_config=True,
        submittable=True,
    ),
    Command(
        "report",
        "rebuild a run's report from stored files",
        f"{_STAGE_HANDLERS}:cmd_report",
        (
            Argument(("run",), {"help": "run name (train.run)"}),
            Argument(("--root",), {"default": ".sora", "help": "storage root (default .sora; s3://bucket/prefix)"}),
            Argument(("--endpoint-url",), {"default": None, "help": "S3-compatible endpoint"}),
        ),
    ),
)
