"""Where data-stage tasks may run: the Ray `.options()` every data-stage task is submitted with.

Every Ray task of the data stage is submitted through `task_options()` (read, exchange map and
reduce, dedup, rejects, index, tokenize, pack). `configure(data)` is called once by the stage
before any task is submitted. Default: no constraint (a laptop runs everything on its one node).

`data.placement` confines the tasks to nodes with a custom Ray resource (each task asks for a tiny
share of it, so CPUs still decide how many run) and/or matching node labels (Ray's
`label_selector`). A placement no node satisfies would leave every task pending forever, so the
cluster is checked before the first task: a clear `UserError` naming the resource or labels
instead (after `placement.wait_s` for an autoscaled data group to bring a node up).
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import UserError

# The share of `placement.resource` one task asks for: the smallest step Ray keeps (1e-4) times
# ten, so a node with 1 unit runs 1000 data tasks at once before the resource (not CPUs) limits.
TASK_SHARE = 0.001

_OPTIONS: dict[str, Any] = {}
_state: dict[str, Any] = {"placement": None, "checked": True, "cpus": 1}


def configure(data) -> None:
    """Set the placement of this process's data-stage tasks from the data config (`data.placement`);
    checks the cluster at once when Ray is up, else before the first task (`task_options`)."""
    _OPTIONS.clear()
    placement = data.placement
    _state.update(placement=placement, checked=placement is None)
    import ray

    if placement is None:
        if ray.is_initialized():
            _state["cpus"] = max(1, int(_eligible_cpus(None)))
        return
    if placement.resource:
        _OPTIONS["resources"] = {placement.resource: TASK_SHARE}
    if placement.labels:
        _OPTIONS["label_selector"] = dict(placement.labels)
    if ray.is_initialized():
        check_cluster()


def cpus() -> int:
    """CPUs of the nodes that may run data tasks, as counted when the stage configured placement."""
    return _state["cpus"]


def window() -> int:
    """Data-stage tasks in flight at once (`blocks.run`): twice the CPUs that may run them, so every
    core has its next task queued, and the driver's references stay independent of the corpus."""
    return 2 * _state["cpus"] + 2


def task_options() -> dict[str, Any]:
    """Keyword arguments for `remote_function.options(...)` of every data-stage task (a fresh dict).
    Only the driver is configured: a task that submits tasks itself gets no constraint here."""
    if not _state["checked"]:
        check_cluster()
    return {key: dict(value) for key, value in _OPTIONS.items()}


def describe(placement) -> str:
    """What the placement asks of a node, for messages: "resource 'sora_data' and labels {...}"."""
    parts = [f"resource {placement.resource!r}"] if placement.resource else []
    parts += [f"labels {placement.labels}"] if placement.labels else []
    return " and ".join(parts)


def check_cluster() -> float:
    """CPUs of the live nodes the configured placement allows (of all live nodes without one). Raises a
    `UserError` naming the resource/labels when no node with CPUs satisfies it within `wait_s`."""
    placement = _state["placement"]
    cpus = _eligible_cpus(placement)
    if placement is None:
        return cpus
    if not cpus and placement.wait_s > 0:
        cpus = _wait_for_node(placement)
    if not cpus:
        raise UserError(
            f"data.placement: no node of the Ray cluster with CPUs has {describe(placement)}"
            + (f" (waited {placement.wait_s:g} s)" if placement.wait_s else "")
            + "; the data stage's tasks would wait forever. Start such nodes (`ray start "
            + _start_flags(placement)
            + "`, or the cluster config's data group) or change data.placement"
        )
    _state.update(checked=True, cpus=max(1, int(cpus)))
    return cpus


def eligible(node: dict, placement) -> bool:
    """Whether a node of `ray.nodes()` may run data tasks under `placement`: Ray's own rules (a
    `!` selector matches a node without the label, verified on a local cluster)."""
    if placement is None:
        return True
    if placement.resource and node.get("Resources", {}).get(placement.resource, 0) < TASK_SHARE:
        return False
    labels = node.get("Labels") or {}
    return all(_matches(labels.get(key), selector) for key, selector in (placement.labels or {}).items())


def _matches(value: str | None, selector: str) -> bool:
    negate = selector.startswith("!")
    selector = selector.removeprefix("!")
    if selector.startswith("in(") and selector.endswith(")"):
        allowed = {v.strip() for v in selector[3:-1].split(",")}
    else:
        allowed = {selector}
    return (value not in allowed) if negate else (value in allowed)


def _eligible_cpus(placement) -> float:
    import ray

    return sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive") and eligible(n, placement))


def _wait_for_node(placement) -> float:
    """A probe task with the data tasks' options: its pending demand is what makes an autoscaler
    start a node of the data group. Returns the eligible CPUs once it ran, 0 after `wait_s`."""
    import ray

    options = {key: dict(value) for key, value in _OPTIONS.items()}
    probe = ray.remote(_probe).options(name="placement_probe", **options).remote()
    deadline = time.monotonic() + placement.wait_s
    while time.monotonic() < deadline:
        ready, _ = ray.wait([probe], timeout=min(5.0, max(0.0, deadline - time.monotonic())))
        if ready:
            return _eligible_cpus(placement)
    ray.cancel(probe)
    return 0


def _probe() -> None:
    return None


def _start_flags(placement) -> str:
    flags = []
    if placement.resource:
        flags.append(f"--resources='{{\"{placement.resource}\": 1}}'")
    if placement.labels:
        plain = {k: v for k, v in placement.labels.items() if not v.startswith(("!", "in("))}
        if plain:
            flags.append("--labels=" + ",".join(f"{k}={v}" for k, v in plain.items()))
    return " ".join(flags) or "--labels=..."
