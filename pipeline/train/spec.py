"""What the driver hands to every Ray Train worker: one typed, picklable spec.

Only decisions that must be identical on every rank and that the driver can make correctly are
in here. Hardware-dependent ones (device, bf16) are made on the workers, because the driver may
run on a CPU head node while the workers hold GPUs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..config.run import RunConfig
from ..data.manifest_types import Manifest
from ..keys import RunKeys
from ..storage import ObjectStore


@dataclass(frozen=True)
class LeaseToken:
    """Identity of the run lease the driver holds; workers fence their commits and deletes with it."""

    owner: str
    epoch: int

    def assert_held(self, store: ObjectStore, keys: RunKeys) -> None:
        """Raise unless the lease object still names this holder and has not expired."""
        from ..storage.lease import LeaseHeldError

        current = store.read_with_etag(keys.lease)
        state = json.loads(current[0]) if current else {}
        if state.get("owner") != self.owner or state.get("epoch") != self.epoch:
            raise LeaseHeldError(
                f"run {keys.run!r}: lease lost to {state.get('owner')} (epoch {state.get('epoch')}); "
                f"this writer (epoch {self.epoch}) stops without committing"
            )
        if state["expires_at"] < time.time():
            raise LeaseHeldError(f"run {keys.run!r}: lease epoch {self.epoch} expired; not committing")


@dataclass(frozen=True)
class WorkerSpec:
    config: dict  # RunConfig as JSON (re-validated on the worker)
    manifest: dict  # the pinned dataset version
    model_config: dict  # SoraConfig.to_dict()
    use_gpu: bool
    lease: LeaseToken
    resume_step: int | None  # the driver's preflight choice; workers re-discover after a restart
    restart: bool = False  # train from step 0 even though unusable checkpoints exist
    kill_worker: str | None = None  # fault injection for tests: "RANK:STEP"
    fault_dir: str | None = None
    task: dict | None = None  # fine-tuning task (pipeline.finetune.task.FinetuneTask as JSON); None: pretraining
    # Warm-start lineage decided on the driver (`warm_start.plan`): {run, step, dataset,
    # dataset_version, checkpoint}. Loaded only while the run has no checkpoint of its own.
    init_from: dict | None = None

    def objective(self, store: ObjectStore, node_dir):
        """What this run optimizes (see `objective.py`)."""
        if self.task is None:
            from .objective import LanguageModeling

            return LanguageModeling()
        from ..finetune.objective import Classification

        return Classification(self.task, store, node_dir, self.manifest)

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.model_validate(self.config)

    @property
    def dataset(self) -> Manifest:
        return Manifest.from_dict(self.manifest)

    @property
    def keys(self) -> RunKeys:
        return RunKeys(self.config["train"]["run"])
