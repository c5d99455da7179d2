"""`sora jobs list|status|logs|stop`: the jobs of a Ray cluster, through the Jobs API."""

from __future__ import annotations

import datetime as dt
import json

from . import cluster
from .submit import TERMINAL, follow, wait

ERROR_LINES = 15  # log lines shown with a failed job


def _time(ms: int | None) -> str:
    return "-" if not ms else dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def list_jobs(address: str | None) -> str:
    url = cluster.resolve_address(address)
    client = cluster.job_client(url)
    with cluster.api_errors(url):
        jobs = sorted(client.list_jobs(), key=lambda job: job.start_time or 0)
    rows = [f"{'job id':<44}{'status':<11}{'started':<21}entrypoint"]
    for job in jobs:
        rows.append(
            f"{job.submission_id or job.job_id or '-':<44}{str(job.status.value):<11}{_time(job.start_time):<21}"
            f"{job.entrypoint}"
        )
    return "\n".join(rows)


def last_lines(text: str, count: int = ERROR_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-count:])


def job_status(address: str | None, job_id: str, as_json: bool = False) -> str:
    url = cluster.resolve_address(address)
    client = cluster.job_client(url)
    with cluster.api_errors(url):
        info = client.get_job_info(job_id)
        logs = client.get_job_logs(job_id) if str(info.status.value) == "FAILED" else ""
    if as_json:
        return json.dumps(info.dict() if hasattr(info, "dict") else vars(info), default=str, indent=2)
    status = str(info.status.value)
    lines = [
        f"job {job_id}: {status}",
        f"entrypoint: {info.entrypoint}",
        f"started {_time(info.start_time)}, ended {_time(info.end_time)}",
    ]
    if info.message:
        lines.append(f"message: {info.message.splitlines()[0]}")
    if status == "FAILED":
        lines.append(f"last log lines:\n{last_lines(logs)}")
    return "\n".join(lines)


def job_logs(address: str | None, job_id: str, follow_logs: bool = False) -> int:
    url = cluster.resolve_address(address)
    if follow_logs:
        return follow(url, job_id)
    client = cluster.job_client(url)
    with cluster.api_errors(url):
        print(client.get_job_logs(job_id), end="")
    return 0


def stop_job(address: str | None, job_id: str, timeout: float = 60.0) -> str:
    """Ask the job to stop and wait until it has; returns the final status."""
    url = cluster.resolve_address(address)
    client = cluster.job_client(url)
    with cluster.api_errors(url):
        client.stop_job(job_id)
        status = wait(client, job_id, timeout=timeout)
    return status if status in TERMINAL else f"{status} (still stopping after {timeout:g}s)"
