"""What a submitted job carries besides its code: the resolved config, plain environment variables,
and (only when asked) the submitter's AWS credentials, kept out of everything Ray shows.

Why a file and not `runtime_env.env_vars`: env vars are part of the job's runtime env, which
`sora jobs status`, `ray job list` and the dashboard print for anyone with cluster access. The keys
go instead into a file inside the job's uploaded working directory (a content-addressed package
in the cluster's GCS, shown in job info only as `gcs://_ray_pkg_<hash>.zip`). The runtime env names
the file by its relative path (`SORA_JOB_CREDENTIALS`, not secret), and `install()` points
`AWS_SHARED_CREDENTIALS_FILE` at it in every process of the job: in the driver through the `sora`
entry point, in Ray workers through the runtime env's `worker_process_setup_hook` (they start in
the working directory, which is also on their `PYTHONPATH`, but Ray Train moves its workers to
another directory later). Credentials the cluster has itself (environment, IRSA web identity) come
first in the AWS chain and win; the recommended setup gives the cluster its own credentials and
passes none.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ..errors import UserError

CREDENTIALS_ENV = "SORA_JOB_CREDENTIALS"
CREDENTIALS_FILE = "sora-job/aws-credentials"
SETUP_HOOK = "pipeline.ops.job_env.install"
# Plain settings passed to the job when set here: where the object store is, never who you are.
PASSED_THROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|CREDENTIAL|PRIVATE|SESSION|(^|_)KEY($|_)|ACCESS_KEY", re.I)


def install() -> None:
    """Point the AWS SDKs at the job's credentials file, if the job carries one (else no-op)."""
    relative = os.environ.get(CREDENTIALS_ENV)
    if not relative:
        return
    for base in (os.getcwd(), *sys.path):
        candidate = Path(base or ".") / relative
        if candidate.is_file():
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(candidate.resolve())
            return


def env_vars(names: list[str]) -> dict[str, str]:
    """Plain environment variables for the job: the storage endpoint/region ones set here, plus `names`."""
    for name in names:
        if _SECRET_NAME.search(name):
            raise UserError(
                f"--env {name}: looks like a secret, and job environment variables are visible in job info; "
                "use --pass-credentials for AWS keys, or give the cluster the secret itself"
            )
        if name not in os.environ:
            raise UserError(f"--env {name}: not set in this environment")
    return {name: os.environ[name] for name in (*PASSED_THROUGH, *names) if name in os.environ}


def write_credentials(directory: Path) -> None:
    """Write the submitter's AWS credentials (any boto3 source) as a shared-credentials file."""
    import boto3

    found = boto3.session.Session().get_credentials()
    if found is None:
        raise UserError("--pass-credentials: no AWS credentials found here (environment, profile or SSO)")
    frozen = found.get_frozen_credentials()
    lines = ["[default]", f"aws_access_key_id = {frozen.access_key}", f"aws_secret_access_key = {frozen.secret_key}"]
    if frozen.token:
        lines.append(f"aws_session_token = {frozen.token}")
    path = directory / CREDENTIALS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
