"""Driver side of a training job (`sora pretrain`, `sora finetune`): pin the dataset version, hold
the run lease, start the Ray Train job with the run's objective, show progress, and return the
outcome. The objectives' own drivers are pipeline/pretrain/launch.py and pipeline/finetune/launch.py."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

from sora import SoraConfig

from ..config.run import RunConfig
from ..errors import UserError
from ..keys import CheckpointId, RunKeys
from ..ray_runtime import ensure_ray
from ..records import AttemptLog, DatasetVersion, ExportInfo, RunPin, WarmStartLineage, last_row, read_dataset
from ..storage import ObjectStore
from ..storage.lease import acquire_lease
from . import checkpoint as ckpt
from .attempts import Attempts, supervise
from .metrics import read_rows
from .objective import Objective
from .spec import LeaseToken, WorkerSpec
from .universal import check_convertible


def pin_dataset(store: ObjectStore, config: RunConfig, **pinned_with: Any) -> DatasetVersion:
    """The manifest this run trains on: pinned in `runs/<run>/run.json` at first launch (with
    `pinned_with`, more fields of the pin)."""
    train = config.train
    dataset = train.dataset or config.data.name
    pinned, _ = RunPin.load(store, train.run)
    if pinned:
        if pinned.dataset != dataset:
            raise UserError(
                f"run {train.run!r} trains on dataset {pinned.dataset!r}, not {dataset!r}; use another run name"
            )
        if train.dataset_version not in ("LATEST", pinned.dataset_version):
            raise UserError(
                f"run {train.run!r} is pinned to {dataset} v{pinned.dataset_version}, not v{train.dataset_version}"
            )
        return read_dataset(store, dataset, pinned.dataset_version)
    manifest = read_dataset(store, dataset, train.dataset_version)
    RunPin(dataset=dataset, dataset_version=manifest.version, **pinned_with).create(store, train.run)
    return manifest


class Progress:
    """Polls rank 0's newest metrics segment and prints one line per new log interval."""

    def __init__(
        self, store: ObjectStore, run: str, max_steps: int, console: Console, epoch: int | None = None
    ) -> None:
        self.store, self.keys, self.max_steps, self.console = store, RunKeys(run), max_steps, console
        self.epoch, self.events_shown = epoch, 0  # the job's attempt messages (retry_policy.py)
        self.stop = threading.Event()
        self.last_step = 0
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(2.0):
            self.show()

    def show(self) -> None:
        self._show_attempts()
        try:
            row = last_row(self.store, self.keys.metrics)
        except (FileNotFoundError, OSError):
            return
        if row is None or row.step == self.last_step:
            return
        self.last_step = row.step
        eta = (self.max_steps - row.step) * row.step_s
        val = f" val {row.val_loss:.3f}" if row.val_loss is not None else ""
        val += f" acc {row.val_accuracy:.1%}" if row.val_accuracy is not None else ""
        self.console.print(
            f"step {row.step}/{self.max_steps} loss {row.loss:.4f}{val} lr {row.lr:.2e} "
            f"{row.tokens_per_s:,.0f} tok/s MFU {row.mfu:.1%} ETA {eta:.0f}s"
        )

    def _show_attempts(self) -> None:
        """Print what Ray Train's controller decided after a failure (it runs elsewhere)."""
        if self.epoch is None:
            return
        try:
            record = AttemptLog.load(self.store, self.keys.run, self.epoch)
        except (OSError, ValueError):
            return
        events = record.events if record else []
        for event in events[self.events_shown :]:
            self.console.print(f"[yellow]{escape(event)}[/yellow]")
        self.events_shown = max(self.events_shown, len(events))

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.show()


def preflight_resume(
    store: ObjectStore, config: RunConfig, model_config: SoraConfig, restart: bool
) -> CheckpointId | None:
    """Fail before any resource is requested when the run cannot resume (clear line, exit 2)."""
    keys = RunKeys(config.train.run)
    found, _ = ckpt.find_resume(store, keys, restart=restart)
    if found is not None:
        saved = ckpt.read_state(store, keys, found)
        current = ckpt.compatibility_fields(config.train, model_config.to_dict(), bf16=saved.bf16)
        ckpt.check_compatible(saved.compatibility, current)  # precision is checked again on the workers
        check_convertible(saved, config.train, f"run {keys.run!r}'s checkpoint {found.tag}")
    return found


def finished_export(store: ObjectStore, keys: RunKeys, max_steps: int) -> ExportInfo | None:
    """The export's lineage if the run already finished (last step, or early stopping), else None."""
    if not store.exists(f"{keys.export}/config.json"):
        return None
    info = ExportInfo.load(store, keys.run)
    return info if info is not None and info.finished(max_steps) else None


def run_training(
    config: RunConfig,
    store: ObjectStore,
    manifest: DatasetVersion,
    model_config: SoraConfig,
    stage: str,
    objective: Objective,
    plan_warm_start: Callable[[int | None], WarmStartLineage | None] | None = None,
    quiet: bool = False,
    restart: bool = False,
) -> dict[str, Any]:
    """One Ray Train + DeepSpeed job of `config.train.run` optimizing `objective`.

    Holds the run lease for the whole job (one writer per run); when the lease is lost the running
    attempt is aborted within one heartbeat and the job fails with the new holder's name.
    `plan_warm_start(resume_step)`, called under the lease before Ray starts, decides the warm-start
    lineage (pretraining). Attempts (drains, lost workers, errors) are supervised by attempts.py.
    """
    train = config.train
    keys = RunKeys(train.run)
    lease = acquire_lease(store, keys.lease, train.lease_seconds, what=f"{stage} of run {train.run!r}")
    attempts = Attempts.of(train)
    try:
        with lease.keep_alive(train.lease_seconds, on_lost=_abort_training) as heartbeat:
            resume_step = preflight_resume(store, config, model_config, restart)
            init_from = plan_warm_start(resume_step) if plan_warm_start else None
            ensure_ray(config.ray)
            use_gpu = _use_gpu(train)
            spec = WorkerSpec(
                config=config.model_dump(mode="json"),
                manifest=manifest,
                model_config=model_config.to_dict(),
                use_gpu=use_gpu,
                lease=LeaseToken(lease.owner, lease.epoch),
                resume_step=resume_step,
                objective=objective,
                restart=restart,
                # Fault injection for reliability tests only: SORA_KILL_WORKER="RANK:STEP[:raise|:upload]".
                kill_worker=os.environ.get("SORA_KILL_WORKER"),
                fault_dir=os.environ.get("SORA_FAULT_DIR"),
                pace_file=os.environ.get("SORA_STEP_PACE_FILE"),
                # Benchmarks only: a store with a fixed upload bandwidth per worker (bytes/s).
                upload_bandwidth=float(os.environ.get("SORA_UPLOAD_BANDWIDTH") or 0) or None,
                init_from=init_from,
            )
            from .retry_policy import BudgetCallback, load_counts, newest_commit  # imports Ray Train

            where = (config.storage.root, config.storage.settings(), train.run, lease.epoch)
            events: list[str] = []  # what the controllers decided (printed by Progress)
            console = Console(stderr=True, quiet=quiet)
            console.print(_headline(stage, train, use_gpu, manifest, resume_step, init_from))
            with Progress(store, train.run, train.max_steps, console, lease.epoch):

                def fit():
                    try:
                        return _torch_trainer(spec, store, use_gpu, BudgetCallback(attempts, events, *where)).fit()
                    finally:
                        events[:] = load_counts(store, train.run, lease.epoch, attempts)  # the controller's

                supervise(fit, attempts, console, heartbeat.lost, lambda: newest_commit(store, keys))
            heartbeat.assert_held()
    finally:
        lease.release()  # the next launch need not wait for the lease to expire
    rows = read_rows(store, keys.metrics)
    export = store.uri(keys.export) if store.exists(f"{keys.export}/config.json") else None
    return {
        "final": rows[-1] if rows else {},
        "export": export,
        "manifest_version": manifest.version,
        "attempts": {"failures": attempts.failures, "node_losses": attempts.node_losses, "drains": attempts.drains},
    }


def _abort_training(error: Exception) -> None:
    """The lease is gone: stop the running attempt now (Ray Train aborts the run on SIGINT to the
    driver's main thread); `heartbeat.assert_held()` then fails the job naming the new holder."""
    print(f"{error}; aborting the training run", file=sys.stderr, flush=True)
    if threading.current_thread() is not threading.main_thread():
        os.kill(os.getpid(), signal.SIGINT)


def _use_gpu(train) -> bool:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = gpus >= train.min_workers if train.use_gpu == "auto" else bool(train.use_gpu)
    if use_gpu and gpus < train.min_workers:
        raise UserError(f"use_gpu: true with {train.min_workers} workers, but the cluster has {gpus:g} GPUs")
    return use_gpu


def _ray_train_settings(train) -> None:
    """Ray Train settings that only exist as environment variables (read by its controller, which
    inherits them from this driver)."""
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(train.placement_timeout_s)
    # Drains are announced with deadlines of tens of seconds: look every second, not every 5 s.
    os.environ.setdefault("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "1")


def _torch_trainer(spec: WorkerSpec, store: ObjectStore, use_gpu: bool, budget=None):
    import ray.train
    from ray.train.torch import TorchConfig

    from .ray_trainer import SoraTorchTrainer as TorchTrainer

    train = spec.run_config.train
    _ray_train_settings(train)
    return TorchTrainer(
        _entry,
        # Pickled here, unpickled by the train function: Ray Train also keeps train_loop_config in
        # the run context that its controller (a new process at every attempt) and each worker
        # unpickle before training starts, and the spec's classes import torch, transformers, sora.
        train_loop_config={"spec": pickle.dumps(spec)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.workers,  # N, or (min, max): Ray Train places what the cluster has
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": 1},
            elastic_resize_monitor_interval_s=train.resize_interval_s,
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(train.collective_timeout_s)),
        run_config=ray.train.RunConfig(
            name=train.run,
            storage_path=store.path(RunKeys(train.run).ray),
            storage_filesystem=store.fs,
            # Ray Train retries every failed worker group in its controller (no relaunch of fit());
            # Sora's budgets decide there and stop the run (retry_policy.py). Drains announced to
            # Ray (node preemption) are retried without limit, as Ray does by default.
            failure_config=ray.train.FailureConfig(max_failures=-1, max_preemption_failures=-1),
            callbacks=[budget] if budget is not None else None,
        ),
    )


def _headline(stage, train, use_gpu: bool, manifest: DatasetVersion, resume_step, init_from) -> str:
    workers = f"{train.workers} workers"
    if train.elastic:
        workers = f"{train.min_workers}-{train.max_workers} workers (elastic)"
    return (
        f"[bold]{stage} {train.run}[/bold]: {train.model} ({train.strategy}, {workers}, "
        f"{'GPU' if use_gpu else 'CPU'}, precision {train.precision}) on {manifest.dataset} "
        f"v{manifest.version}"
        + (f", resuming at step {resume_step}" if resume_step else "")
        + (f", warm start from {init_from.run} step {init_from.step}" if init_from and not resume_step else "")
    )


def _entry(loop_config: dict) -> dict:
    from .worker import train_worker

    return train_worker(pickle.loads(loop_config["spec"]))  # rank 0's outcome reaches the driver (attempts.py)
