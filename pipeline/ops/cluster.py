"""Talking to a Ray cluster's Jobs API: address, token authentication, clear errors, node inventory.

Token authentication (Ray >= 2.52 `RAY_AUTH_MODE=token`, KubeRay `authOptions: {mode: token}`): the
token is read from `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`,
and sent as `Authorization: Bearer ...` on every request. It is sent whether or not this process
has `RAY_AUTH_MODE=token` set, so a user only needs the token itself. It is never printed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # the variable the `ray job` CLI reads too


def resolve_address(address: str | None) -> str:
    """The Jobs API URL: `--address`, else `RAY_API_SERVER_ADDRESS`, else an http(s) `RAY_ADDRESS`."""
    address = address or os.environ.get(ADDRESS_ENV) or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError(f"no Ray cluster address: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
    if "://" not in address:
        address = f"http://{address}"
    if urlparse(address).scheme not in ("http", "https"):
        raise UserError(f"--address {address!r}: the Jobs API address is the dashboard URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def auth_token() -> str | None:
    """The cluster token from the environment or the token file, or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not Path(path).is_file():
            raise UserError(f"RAY_AUTH_TOKEN_PATH names {path}, which does not exist")
        return Path(path).read_text().strip()
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() if default.is_file() else None


def _headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def api_errors(address: str) -> Iterator[None]:
    """Turn connection and authentication failures into one clear line (exit code 2)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as error:
        text = str(error)
        # The server says the token is missing, or Ray's own loader (auth mode on in this process)
        # found none to send: either way the user has to supply one.
        missing = ("Authentication required", "Missing authentication token", "couldn't find an authentication token")
        if any(marker in text for marker in missing):
            raise UserError(
                f"the Ray cluster at {address} requires a token (token authentication is on): set RAY_AUTH_TOKEN "
                "or RAY_AUTH_TOKEN_PATH to the cluster's token"
            ) from None
        raise UserError(
            f"the Ray cluster at {address} rejected the token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / "
            "~/.ray/auth_token): use the cluster's current token"
        ) from None
    except ConnectionError:
        raise UserError(f"cannot reach the Ray Jobs API at {address}: is the head running and the port open?") from None
    except RuntimeError as error:  # the SDK's "Request failed with status code 4xx: <reason>"
        text = str(error)
        if "status code 4" not in text:
            raise
        raise UserError(f"Ray Jobs API at {address}: {text.split(': ', 1)[-1].strip().rstrip('.')}") from None


def job_client(url: str):
    """A `JobSubmissionClient` for the resolved Jobs API `url`, with the token when one is configured."""
    from ray.job_submission import JobSubmissionClient

    # The SDK logs every package upload and websocket close at INFO; sora prints what matters.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _forget_cached_token()
    with api_errors(url):
        return JobSubmissionClient(url, headers=_headers())


def _forget_cached_token() -> None:
    """Ray's SDK adds the token its process-wide loader cached at first use whenever we send none;
    reset it so a rotated or removed token (environment, token file) is what the next call uses."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # Ray without token authentication
        return
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass(frozen=True)
class Inventory:
    nodes: int
    gpus: float
    head_is_local: bool


def _is_local(host: str) -> bool:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    with contextlib.suppress(OSError):
        local = {socket.gethostname(), socket.getfqdn()}
        local |= {info[4][0] for name in list(local) for info in socket.getaddrinfo(name, None)}
        return host in local
    return False


def inventory(address: str) -> Inventory:
    """Alive nodes and GPUs of the cluster (state API), and whether its head is this machine."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    with api_errors(address):
        client = StateApiClient(address=address, headers={"Content-Type": "application/json", **_headers()})
        nodes = client.list(
            StateResource.NODES,
            options=ListApiOptions(filters=[("state", "=", "ALIVE")], detail=True),
            raise_on_missing_output=False,
        )
    gpus = sum(float(node.resources_total.get("GPU", 0)) for node in nodes)
    return Inventory(nodes=len(nodes), gpus=gpus, head_is_local=_is_local(urlparse(address).hostname or ""))
