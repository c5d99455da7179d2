"""Handlers of the operations commands `sora plan`, `sora submit` and `sora jobs list|status|logs|stop`
(declared in `pipeline.commands`): each turns the parsed arguments into one call of `plan`, `submit`
or `jobs` and prints its result.
"""

from __future__ import annotations

import argparse

from ..config.loader import load_config_with_overrides, parse_overrides


def cmd_plan(args: argparse.Namespace) -> None:
    from .plan import format_plan, make_plan

    config = load_config_with_overrides(args.config, args.set)
    print(format_plan(make_plan(config, args.gpu_memory, args.gpus_per_node)))


def cmd_submit(args: argparse.Namespace) -> int:
    from .cluster import resolve_address
    from .submit import SubmitOptions, follow, submit

    options = SubmitOptions(
        stage=args.stage,
        address=args.address,
        overrides=parse_overrides(args.set),
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


def cmd_jobs_list(args: argparse.Namespace) -> None:
    from .jobs import list_jobs

    print(list_jobs(args.address))


def cmd_jobs_status(args: argparse.Namespace) -> None:
    from .jobs import job_status

    print(job_status(args.address, args.job_id, args.json))


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from .jobs import job_logs

    return job_logs(args.address, args.job_id, args.follow)


def cmd_jobs_stop(args: argparse.Namespace) -> None:
    from .jobs import stop_job

    print(f"job {args.job_id} {stop_job(args.address, args.job_id, args.timeout)}")
