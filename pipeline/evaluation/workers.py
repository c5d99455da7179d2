"""Evaluation on the cluster's workers: one Ray task per checkpoint; the driver never holds a model.

The driver (`checkpoints.evaluate_run`) decides what is left to evaluate and hands it to
`evaluate_on_workers`, which submits one task per checkpoint and receives the small `EvalResults`
record each task stored. A task does the heavy work where it runs: it builds the scratch baseline
when asked (`scratch_language_model`: random init of the pretrained architecture, on the task's
device and in its dtype, stored as an HF export), then `evaluate_checkpoint_to_store` (fetch the
checkpoint, materialize the suites, load the model, run lm-eval, store the results).

Resources follow `eval.device`:

    auto   a GPU when the Ray cluster has one, else CPUs
    cuda   a GPU; a clear error before any work when the cluster has none
    cpu    CPUs

A GPU task asks for one GPU and scores in bfloat16 (float32 on a GPU without it); the checkpoints'
tasks run side by side, as many at once as the cluster has free GPUs, and each task's process exits
after it (Ray's `max_calls=1`), handing its GPU memory back. On CPUs one task runs at a time, in
float32: it asks for one CPU (a driver or job holding some of a node's CPUs cannot starve it) and
computes with as many threads as its node has CPUs; a second model beside it would only halve
both and double the memory.

When the suites of the dataset version are not built yet, a one-CPU task builds them first (the
held-out documents stream through it: pipeline/suites), so the checkpoints' tasks only read them
(`ensure_suites`, which the fine-tune driver uses too).
After a task fails no new one starts; those already running finish (their results are stored);
then the first failure is raised. A `UserError` raised in a task (an unknown lm-eval task, a
missing checkpoint file) reaches the caller as itself, with its own message (Ray wraps a task's
exception in a `RayTaskError` whose text is a remote traceback).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config.evaluate import EvalConfig
from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys
from ..ray_runtime import ensure_ray, get_result
from ..records import DatasetVersion, EvalResults, ExportInfo
from ..storage import ObjectStore, open_store
from ..suites.ensure import ensure_suites
from .stage import Kind, evaluate_checkpoint_to_store


@dataclass(frozen=True)
class Scratch:
    """The scratch baseline to build (if absent) before evaluating it: the pretrained run's
    architecture (its export's HF config) and lineage, randomly initialized from `seed`."""

    run: str
    hf_config: dict[str, Any]
    info: ExportInfo
    seed: int


@dataclass(frozen=True)
class EvalJob:
    """One checkpoint to evaluate: what `evaluate_checkpoint_to_store` needs, plus the scratch
    baseline to build first when the checkpoint is one."""

    name: str
    checkpoint_uri: str
    kind: Kind
    lineage: dict[str, Any]
    scratch: Scratch | None = None


def scratch_uri(store: ObjectStore, run: str) -> str:
    """Where the scratch baseline of `run` is stored (an HF export of run `<run>-scratch-init`)."""
    return store.uri(RunKeys(f"{run}-scratch-init").export)


def use_gpu(eval_cfg: EvalConfig) -> bool:
    """Whether evaluation tasks ask for a GPU (`eval.device`, against the cluster's GPUs)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if eval_cfg.device == "cuda" and gpus < 1:
        raise UserError("eval.device is cuda, but the Ray cluster has no GPUs: set eval.device to auto or cpu")
    return gpus >= 1 if eval_cfg.device == "auto" else eval_cfg.device == "cuda"


def evaluate_on_workers(
    config: RunConfig, store: ObjectStore, run: str, manifest: DatasetVersion, jobs: list[EvalJob]
) -> dict[str, EvalResults]:
    """Run `jobs` as Ray tasks (module docstring); returns {name: the results each stored}."""
    import ray

    ensure_ray(config.ray)
    gpu = use_gpu(config.eval)
    ensure_suites(config, store, manifest)
    options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1, "max_calls": 1} if gpu else {"num_cpus": 1}
    device, window = ("cuda", len(jobs)) if gpu else ("cpu", 1)
    queue, pending = list(jobs), {}
    results: dict[str, EvalResults] = {}
    failures: dict[str, BaseException] = {}
    started = time.monotonic()
    # lm-eval's own progress bars stay in the workers' logs: one line per finished checkpoint here.
    print(f"evaluate: {len(jobs)} checkpoint(s) on {device}: {', '.join(job.name for job in jobs)}", file=sys.stderr)
    while pending or (queue and not failures):
        while queue and not failures and len(pending) < window:
            job = queue.pop(0)
            task = _remote(_evaluate, f"sora-eval-{job.name}", **options)
            pending[task.remote(config, run, manifest, job, device)] = job.name
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            name = pending.pop(ref)
            try:
                results[name] = get_result(ref)
            except Exception as error:  # raised below, after the tasks in flight finished
                failures[name] = error
            state = "failed" if name in failures else f"{len(results[name].results)} task(s)"
            finished = len(results) + len(failures)
            print(
                f"evaluate {name}: {state} ({finished}/{len(jobs)}, {time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    for job in jobs:
        if job.name in failures:
            raise failures[job.name]
    return results


_REMOTES: dict[Callable, Any] = {}


def _remote(body: Callable, name: str, **options: Any):
    import ray

    if body not in _REMOTES:
        _REMOTES[body] = ray.remote(body)
    return _REMOTES[body].options(name=name, **options)


def _evaluate(config: RunConfig, run: str, manifest: DatasetVersion, job: EvalJob, device: str) -> EvalResults:
    """Task: build the scratch baseline if the job is one and it is missing, then evaluate the job."""
    import torch

    store = open_store(config.storage.root, config.storage.settings())
    threads = torch.get_num_threads()
    if device == "cpu":  # the task holds one CPU of Ray's but computes with its node's cores
        torch.set_num_threads(_node_cpus())
    try:
        if job.scratch is not None:
            scratch = job.scratch
            scratch_language_model(store, scratch.run, scratch.hf_config, scratch.info, manifest, scratch.seed, device)
        return evaluate_checkpoint_to_store(
            config, store, run, job.name, job.checkpoint_uri, job.kind, job.lineage, device=device
        )
    finally:
        torch.set_num_threads(threads)  # Ray reuses a CPU task's process for other tasks


def _node_cpus() -> int:
    """CPUs of the Ray node this task runs on (at most the machine's)."""
    import os

    import ray

    node = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node), 1)
    return max(1, min(int(cpus), os.cpu_count() or 1))


def scratch_language_model(
    store: ObjectStore,
    run: str,
    hf_config: dict[str, Any],
    info: ExportInfo,
    manifest: DatasetVersion,
    seed: int,
    device: str = "cpu",
) -> str:
    """A randomly initialized LM of the pretrained architecture (the "scratch" column), stored once.

    Built on `device` in the dtype it is scored in there (float32 on CPU, the same weights for a
    seed as every earlier build; bfloat16 on a GPU that supports it), so a 7B baseline never exists
    as a float32 copy in host memory.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from sora import SoraConfig

    from ..train.export import upload_hf_model
    from .harness import eval_dtype

    name = f"{run}-scratch-init"
    key = RunKeys(name).export
    if not store.exists(f"{key}/config.json"):
        dtype = eval_dtype(device)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(SoraConfig.from_dict(hf_config), dtype=getattr(torch, dtype))
        lineage = info.model_copy(
            update={"run": name, "step": 0, "initialized_like": run, "seed": seed, "init_dtype": dtype}
        )
        upload_hf_model(store, name, model, manifest, lineage)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return store.uri(key)
