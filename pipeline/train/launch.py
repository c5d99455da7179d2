"""Driver side of `sora pretrain`: validate, pin the dataset version, start the Ray Train job,
show progress, and return the outcome."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from rich.console import Console

from sora import SoraConfig

from ..config.run import RunConfig
from ..data.manifest import read_version
from ..errors import UserError
from ..keys import RunKeys
from ..ray_runtime import ensure_ray
from ..storage import ObjectStore, open_store
from ..storage.lease import acquire_lease
from . import checkpoint as ckpt
from . import warm_start
from .metrics import read_rows
from .spec import LeaseToken, WorkerSpec


def model_config_for(config: RunConfig, manifest: dict) -> SoraConfig:
    tokenizer = manifest["tokenizer"]
    overrides = dict(config.train.model_overrides)
    if "vocab_size" in overrides and overrides["vocab_size"] != tokenizer["vocab_size"]:
        raise UserError(
            f"model vocab_size {overrides['vocab_size']} != the dataset tokenizer's {tokenizer['vocab_size']}"
        )
    overrides.update(
        vocab_size=tokenizer["vocab_size"],
        eos_token_id=tokenizer["eos_id"],
        bos_token_id=tokenizer["eos_id"],
        pad_token_id=tokenizer["pad_id"],
    )
    model = SoraConfig.from_preset(config.train.model, **overrides)
    model.max_position_embeddings = max(model.max_position_embeddings, manifest["seq_len"])
    return model


def pin_dataset(store: ObjectStore, config: RunConfig) -> dict:
    """The manifest this run trains on: pinned in `runs/<run>/run.json` at first launch."""
    train = config.train
    dataset = train.dataset or config.data.name
    pin_key = RunKeys(train.run).pin
    existing = store.read_with_etag(pin_key)
    if existing:
        pinned = json.loads(existing[0])
        if pinned["dataset"] != dataset:
            raise UserError(
                f"run {train.run!r} trains on dataset {pinned['dataset']!r}, not {dataset!r}; use another run name"
            )
        if train.dataset_version not in ("LATEST", pinned["dataset_version"]):
            raise UserError(
                f"run {train.run!r} is pinned to {dataset} v{pinned['dataset_version']}, not v{train.dataset_version}"
            )
        return read_version(store, dataset, pinned["dataset_version"])
    manifest = read_version(store, dataset, train.dataset_version)
    store.create(pin_key, json.dumps({"dataset": dataset, "dataset_version": manifest["version"]}).encode())
    return manifest


class Progress:
    """Polls rank 0's newest metrics segment and prints one line per new log interval."""

    def __init__(self, store: ObjectStore, run: str, max_steps: int, console: Console) -> None:
        self.store, self.keys, self.max_steps, self.console = store, RunKeys(run), max_steps, console
        self.stop = threading.Event()
        self.last_step = 0
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(2.0):
            self.show()

    def show(self) -> None:
        try:
            segments = self.store.list(self.keys.metrics)
            lines = self.store.read(segments[-1]).decode().splitlines() if segments else []
        except (FileNotFoundError, OSError):
            return
        if not lines:
            return
        row = json.loads(lines[-1])
        if row["step"] == self.last_step:
            return
        self.last_step = row["step"]
        step_s = row["data_wait_s"] + row["compute_s"]
        eta = (self.max_steps - row["step"]) * step_s
        val = f" val {row['val_loss']:.3f}" if "val_loss" in row else ""
        val += f" acc {row['val_accuracy']:.1%}" if "val_accuracy" in row else ""
        self.console.print(
            f"step {row['step']}/{self.max_steps} loss {row['loss']:.4f}{val} lr {row['lr']:.2e} "
            f"{row['tokens_per_s']:,.0f} tok/s MFU {row['mfu']:.1%} ETA {eta:.0f}s"
        )

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.show()


def preflight_resume(store: ObjectStore, config: RunConfig, model_config: SoraConfig, restart: bool) -> int | None:
    """Fail before any resource is requested when the run cannot resume (clear line, exit 2)."""
    keys = RunKeys(config.train.run)
    step, _ = ckpt.find_resume(store, keys, restart=restart)
    if step is not None:
        saved = ckpt.read_state(store, keys, step).get("compatibility", {})
        current = ckpt.compatibility_fields(config.train, model_config.to_dict(), bf16=saved.get("bf16"))
        ckpt.check_compatible(saved, current)  # precision is checked again on the workers
    return step


def finished_export(store: ObjectStore, keys: RunKeys, max_steps: int) -> dict | None:
    """The export's lineage if the run already finished (last step, or early stopping), else None."""
    if not store.exists(f"{keys.export}/config.json"):
        return None
    try:
        info = json.loads(store.read(f"{keys.export}/sora_export.json"))
    except FileNotFoundError:
        return None
    return info if info.get("step", 0) >= max_steps or info.get("early_stopped") else None


def pretrain(config: RunConfig, quiet: bool = False, restart: bool = False) -> dict[str, Any]:
    """Train (or resume) `config.train.run`; returns the final metrics row and the export URI.

    A run whose export already holds its last step does no work (a repeated `sora run`).
    `restart` trains from step 0 even though the run has committed checkpoints that cannot be
    resumed from.
    """
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    keys = RunKeys(config.train.run)
    if not restart and finished_export(store, keys, config.train.max_steps):
        rows = read_rows(store, keys.metrics)
        return {"final": rows[-1] if rows else {}, "export": store.uri(keys.export), "skipped": True}
    manifest = pin_dataset(store, config)
    model_config = model_config_for(config, manifest)
    return run_training(config, store, manifest, model_config, "pretrain", quiet=quiet, restart=restart)


def run_training(
    config: RunConfig,
    store: ObjectStore,
    manifest: dict,
    model_config: SoraConfig,
    stage: str,
    task: dict | None = None,
    quiet: bool = False,
    restart: bool = False,
) -> dict[str, Any]:
    """One Ray Train + DeepSpeed job of `config.train.run` (pretraining, or fine-tuning with `task`).

    Holds the run lease for the whole job (one writer per run).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    train = config.train
    keys = RunKeys(train.run)
    lease = acquire_lease(store, keys.lease, train.lease_seconds, what=f"{stage} of run {train.run!r}")
    try:
        with lease.keep_alive(train.lease_seconds) as heartbeat:
            resume_step = preflight_resume(store, config, model_config, restart)
            init_from = None if task else warm_start.plan(store, config, manifest, model_config, resume_step)
            ensure_ray(config.ray)
            gpus = ray.cluster_resources().get("GPU", 0)
            use_gpu = gpus >= train.workers if train.use_gpu == "auto" else bool(train.use_gpu)
            if use_gpu and gpus < train.workers:
                raise UserError(f"use_gpu: true with {train.workers} workers, but the cluster has {gpus:g} GPUs")
            spec = WorkerSpec(
                config=config.model_dump(mode="json"),
                manifest=manifest,
                model_config=model_config.to_dict(),
                use_gpu=use_gpu,
                lease=LeaseToken(lease.owner, lease.epoch),
                resume_step=resume_step,
                restart=restart,
                # Fault injection for reliability tests only: SORA_KILL_WORKER="RANK:STEP".
                kill_worker=os.environ.get("SORA_KILL_WORKER"),
                fault_dir=os.environ.get("SORA_FAULT_DIR"),
                task=task,
                init_from=init_from,
            )
            trainer = TorchTrainer(
                _entry,
                train_loop_config={"spec": spec},
                scaling_config=ray.train.ScalingConfig(
                    num_workers=train.workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}
                ),
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                run_config=ray.train.RunConfig(
                    name=train.run,
                    storage_path=store.path(keys.ray),
                    storage_filesystem=store.fs,
                    failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
                ),
            )
            console = Console(stderr=True, quiet=quiet)
            console.print(
                f"[bold]{stage} {train.run}[/bold]: {train.model} ({train.strategy}, {train.workers} workers, "
                f"{'GPU' if use_gpu else 'CPU'}, precision {train.precision}) on {manifest['dataset']} "
                f"v{manifest['version']}"
                + (f", resuming at step {resume_step}" if resume_step else "")
                + (
                    f", warm start from {init_from['run']} step {init_from['step']}"
                    if init_from and not resume_step
                    else ""
                )
            )
            with Progress(store, train.run, train.max_steps, console):
                result = trainer.fit()
            if result.error:
                raise _user_facing(result.error)
            heartbeat.assert_held()
    finally:
        lease.release()  # the next launch need not wait for the lease to expire
    rows = read_rows(store, keys.metrics)
    export = store.uri(keys.export) if store.exists(f"{keys.export}/config.json") else None
    return {"final": rows[-1] if rows else {}, "export": export, "manifest_version": manifest["version"]}


def _user_facing(error: Exception) -> Exception:
    """A worker's `ResumeError` / lease loss arrives wrapped by Ray; surface it as the one clear line."""
    seen = error
    while seen is not None:
        if isinstance(seen, UserError):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    for marker in ("ResumeError: ", "LeaseHeldError: "):
        if marker in text:
            return UserError(text.split(marker, 1)[1].splitlines()[0])
    return error


def _entry(loop_config: dict) -> None:
    from .worker import train_worker

    train_worker(loop_config["spec"])
