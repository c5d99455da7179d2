"""What the driver hands to every Ray Train worker: one typed, picklable spec.

Only decisions that must be identical on every rank and that the driver can make correctly are
in here. Hardware-dependent ones (device, bf16) are made on the workers, because the driver may
run on a CPU head node while the workers hold GPUs. The objective travels as the object itself
(built on the driver, light); what it needs on the worker (store, node directory) it gets from
`bind` there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config.run import RunConfig
from ..keys import CheckpointId, RunKeys
from ..records import DatasetVersion, WarmStartLineage
from ..storage import ObjectStore
from ..storage.lease import LeaseHeldError, read_lease_state
from .objective import Objective


@dataclass(frozen=True)
class LeaseToken:
    """Identity of the run lease the driver holds; workers fence their commits and deletes with it."""

    owner: str
    epoch: int

    def assert_held(self, store: ObjectStore, keys: RunKeys) -> None:
        """Raise unless the lease object still names this holder and has not expired."""
        state = read_lease_state(store, keys.lease)
        owner, epoch = (state.owner, state.epoch) if state else (None, None)
        if owner != self.owner or epoch != self.epoch:
            raise LeaseHeldError(
                f"run {keys.run!r}: lease lost to {owner} (epoch {epoch}); "
                f"this writer (epoch {self.epoch}) stops without committing"
            )
        if state.expires_at < time.time():
            raise LeaseHeldError(f"run {keys.run!r}: lease epoch {self.epoch} expired; not committing")


@dataclass(frozen=True)
class WorkerSpec:
    config: dict  # RunConfig as JSON (re-validated on the worker)
    manifest: DatasetVersion  # the pinned dataset version
    model_config: dict  # SoraConfig.to_dict()
    use_gpu: bool
    lease: LeaseToken
    resume_step: CheckpointId | None  # the driver's preflight choice; workers re-discover after a restart
    objective: Objective  # what this run optimizes (pretrain or finetune objective)
    restart: bool = False  # train from step 0 even though unusable checkpoints exist
    kill_worker: str | None = None  # fault injection for tests: "RANK:STEP[:raise|:upload]"
    fault_dir: str | None = None
    pace_file: str | None = None  # tests: seconds to wait after each step, read from this file
    upload_bandwidth: float | None = None  # bench: each worker's store uploads at this many bytes/s
    # Warm-start lineage decided on the driver (pipeline/pretrain/warm_start.py). Loaded only
    # while the run has no checkpoint of its own.
    init_from: WarmStartLineage | None = None

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.model_validate(self.config)

    @property
    def keys(self) -> RunKeys:
        return RunKeys(self.config["train"]["run"])
