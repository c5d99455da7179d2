"""The operations subcommands (`plan`, `submit`, `jobs ...`): argument parsing only, registered by `pipeline.cli`."""

from __future__ import annotations

import argparse


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `parser`, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cmd_plan(args: argparse.Namespace) -> None:
    from ..cli import _load
    from .plan import format_plan, make_plan

    print(format_plan(make_plan(_load(args), args.gpu_memory, args.gpus_per_node)))


def cmd_submit(args: argparse.Namespace) -> int:
    from ..cli import _parse_overrides
    from .cluster import resolve_address
    from .submit import SubmitOptions, follow, submit

    options = SubmitOptions(
        stage=args.stage,
        address=args.address,
        overrides=_parse_overrides(args.set),
        env=args.env,
        pass_credentials=args.pass_credentials,
        allow_local_storage=args.allow_local_storage,
        job_id=args.job_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
        entrypoint_memory=args.entrypoint_memory,
        gpu_memory_gib=args.gpu_memory,
    )
    job_id = submit(args.config, options)
    print(f"submitted job {job_id}", flush=True)
    return follow(resolve_address(args.address), job_id) if args.follow else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from . import jobs

    if args.jobs_command == "list":
        print(jobs.list_jobs(args.address))
    elif args.jobs_command == "status":
        print(jobs.job_status(args.address, args.job_id, args.json))
    elif args.jobs_command == "logs":
        return jobs.job_logs(args.address, args.job_id, args.follow)
    elif args.jobs_command == "stop":
        print(f"job {args.job_id} {jobs.stop_job(args.address, args.job_id, args.timeout)}")
    return 0


def _address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", help="Ray Jobs API (dashboard) URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)"
    )


def register(sub, with_config) -> None:
    """Add `plan`, `submit` and `jobs` to the `sora` subparsers `sub`."""
    from .submit import STAGES

    plan = with_config(
        sub.add_parser("plan", help="per-GPU memory of each parallelism strategy; refuses plans that cannot fit")
    )
    plan.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB", help="memory of one GPU (default 80)")
    plan.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, for CPU memory of offload")
    plan.set_defaults(func=cmd_plan)

    submit = with_config(sub.add_parser("submit", help="run a stage of CONFIG on a Ray cluster (Ray Jobs API)"))
    submit.add_argument("--stage", default="run", choices=STAGES, help="subcommand the job runs (default: run)")
    _address(submit)
    submit.add_argument("--follow", action="store_true", help="stream the logs; exit 0 if the job succeeds, 1 if not")
    submit.add_argument(
        "--env", action="append", default=[], metavar="NAME", help="pass this (non-secret) environment variable"
    )
    submit.add_argument(
        "--pass-credentials",
        action="store_true",
        help="ship this environment's AWS credentials with the job (never in job info or logs); "
        "by default the cluster uses its own",
    )
    submit.add_argument(
        "--allow-local-storage",
        action="store_true",
        help="accept a local storage root on a multi-node or remote cluster (a filesystem shared by all nodes)",
    )
    submit.add_argument("--job-id", help="submission id (default: sora-STAGE-TIME-RANDOM)")
    submit.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver")
    submit.add_argument("--entrypoint-num-gpus", type=float, help="GPUs reserved for the job's driver")
    submit.add_argument("--entrypoint-memory", type=int, metavar="BYTES", help="memory reserved for the driver")
    submit.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB", help="GPU memory for the plan check")
    submit.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster")
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    _address(actions.add_parser("list", help="every job of the cluster"))
    status = actions.add_parser("status", help="status of a job; a failed one with its last log lines")
    status.add_argument("--json", action="store_true", help="the whole job info as JSON")
    logs = actions.add_parser("logs", help="logs of a job")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
    stop = actions.add_parser("stop", help="stop a job and wait until it has stopped")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the stop (default 60)")
    for parser in (status, logs, stop):
        parser.add_argument("job_id", help="submission id printed by sora submit")
        _address(parser)
    jobs.set_defaults(func=cmd_jobs)
