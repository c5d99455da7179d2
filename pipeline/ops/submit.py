"""`sora submit`: run a stage of a config on a Ray cluster through the Ray Jobs API.

The job's runtime env carries the project: `py_modules` with this checkout's `pipeline` and `sora`
packages (so the cluster runs the submitted code; the image supplies the locked dependencies),
and a small working directory holding the validated config (Ray address set to the cluster).
Everything is checked here before anything is requested from the cluster: the config, the stage,
a local storage root that the cluster's workers would not see, and (for GPU training) `sora plan`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..commands import stage_names, training_names
from ..config import load_config
from ..errors import UserError
from . import cluster, job_env

STAGES = stage_names()  # the commands a job may run: `submittable` in the command table
TRAINING_STAGES = training_names()  # the ones that train: checked against `sora plan` first
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONFIG_IN_JOB = "sora-job/config.yaml"


@dataclass
class SubmitOptions:
    stage: str = "run"
    address: str | None = None
    overrides: dict = field(default_factory=dict)
    env: list[str] = field(default_factory=list)
    pass_credentials: bool = False
    allow_local_storage: bool = False
    job_id: str | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    gpu_memory_gib: float = 80.0


def _check_stage(stage: str) -> None:
    """`stage` must be a command of the table that may be submitted."""
    if stage not in STAGES:
        raise UserError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}")


def _check_storage(config, url: str, allow_local: bool) -> cluster.Inventory:
    found = cluster.inventory(url)
    if config.storage.root.startswith("file://") and not allow_local:
        where = None
        if found.nodes > 1:
            where = f"a {found.nodes}-node cluster: its workers would not see this machine's directory"
        elif not found.head_is_local:
            where = f"a cluster on another machine ({url}): it would not see this machine's directory"
        if where:
            raise UserError(
                f"storage root {config.storage.root} is a local directory and the job would run on {where}; "
                "use an s3:// root, or --allow-local-storage if the path is a filesystem shared by every node"
            )
    return found


def _runtime_env(config, staging: Path, options: SubmitOptions) -> dict:
    import pipeline
    import sora

    shipped = config.model_copy(deep=True)
    shipped.ray.address, shipped.ray.num_cpus = "auto", None  # join the cluster the job runs on
    (staging / CONFIG_IN_JOB).parent.mkdir(parents=True, exist_ok=True)
    (staging / CONFIG_IN_JOB).write_text(yaml.safe_dump(shipped.model_dump(mode="json"), sort_keys=False))
    env = job_env.env_vars(options.env)
    if options.pass_credentials:
        job_env.write_credentials(staging)
        env[job_env.CREDENTIALS_ENV] = job_env.CREDENTIALS_FILE
    return {
        "working_dir": str(staging),
        "py_modules": [str(Path(pipeline.__file__).parent), str(Path(sora.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": env,
        "worker_process_setup_hook": job_env.SETUP_HOOK,
    }


def submit(config_path: str, options: SubmitOptions) -> str:
    """Validate, check the cluster, submit; returns the job id."""
    _check_stage(options.stage)
    config = load_config(config_path, options.overrides)
    url = cluster.resolve_address(options.address)
    found = _check_storage(config, url, options.allow_local_storage)
    if options.stage in TRAINING_STAGES and config.train.use_gpu is not False and (found.gpus or config.train.use_gpu):
        from .plan import make_plan

        make_plan(config, options.gpu_memory_gib)  # raises UserError when the strategy cannot fit
    client = cluster.job_client(url)
    job_id = options.job_id or f"sora-{options.stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="sora-submit-") as staging:
        runtime_env = _runtime_env(config, Path(staging), options)
        with cluster.api_errors(url):
            client.submit_job(
                entrypoint=f"python -m pipeline.cli {options.stage} {CONFIG_IN_JOB}",
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"sora_stage": options.stage, "sora_config": Path(config_path).name},
                entrypoint_num_cpus=options.entrypoint_num_cpus,
                entrypoint_num_gpus=options.entrypoint_num_gpus,
                entrypoint_memory=options.entrypoint_memory,
            )
    return job_id


def wait(client, job_id: str, timeout: float | None = None, poll: float = 0.5) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; returns the status name."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll)


def stream_logs(client, job_id: str, out=None) -> None:
    """Write the job's logs to `out` as they arrive, until the job ends."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def follow(url: str, job_id: str, out=None) -> int:
    """Stream logs until the job ends; exit code 0 when it SUCCEEDED, 1 otherwise."""
    client = cluster.job_client(url)
    with cluster.api_errors(url):
        stream_logs(client, job_id, out)
        status = wait(client, job_id)
    print(f"job {job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1
