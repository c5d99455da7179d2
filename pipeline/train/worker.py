"""Entry point of every Ray Train worker: the training loop at a glance (steps in `trainer.py`).

Every step ends with the drain check: Ray Train's preemption signal (a node of this worker group is
being drained, e.g. a spot reclaim announced with a deadline), agreed by all ranks at the same step
boundary. On a drain the workers commit a checkpoint of the step just finished (waiting for its
upload, and for one still in flight) and return `{"drained": step}` instead of training on, so no
step is lost: the driver (launch.py) starts the next attempt at once, on the workers that remain
(elastic) or on a replacement.
"""

from __future__ import annotations

import time

import torch

from .spec import WorkerSpec
from .trainer import Trainer


def train_worker(spec: WorkerSpec) -> dict:
    import ray.train
    import ray.train.collective

    context = ray.train.get_context()
    device = ray.train.torch.get_device() if spec.use_gpu else torch.device("cpu")
    rank, local_rank, world = context.get_world_rank(), context.get_local_rank(), context.get_world_size()
    trainer = Trainer(spec, rank, local_rank, world, device, wait_for_peers=ray.train.collective.barrier)
    try:
        return _train(trainer)
    finally:
        trainer.close()


def _train(trainer: Trainer) -> dict:
    import ray.train

    while trainer.step < trainer.stop_at:
        row = trainer.train_step()
        trainer.maybe_evaluate(row)
        committed = trainer.maybe_checkpoint()  # the newest commit every rank knows of by now, if new
        if committed is not None:
            _report(trainer, committed)
        # Collective: every rank asks at every step and gets rank 0's answer (the same everywhere).
        drain = ray.train.get_preemption_info()
        if drain is not None and trainer.step < trainer.stop_at:
            return _drain(trainer, drain)
    trainer.export()
    if trainer.rank == 0 and trainer.data_exhausted:
        print(trainer.data_exhausted, flush=True)
    return {"finished": trainer.step, "world": trainer.world}


def _drain(trainer: Trainer, drain) -> dict:
    """Commit the step just finished (saved now unless it was; waits for its upload), then leave:
    the driver relaunches."""
    committed = trainer.checkpoint_now(durable=True)
    if committed is not None:
        _report(trainer, committed)
    left = None if drain.deadline_ms is None else drain.deadline_ms / 1000 - time.time()
    if trainer.rank == 0:
        print(
            f"drain of node(s) {', '.join(drain.preempted_node_ids)} (ranks {drain.preempted_ranks}): "
            f"checkpoint of step {trainer.step} committed"
            + (f", {left:.1f} s before the deadline" if left is not None else ""),
            flush=True,
        )
    return {"drained": trainer.step, "world": trainer.world, "deadline_left_s": left}


def _report(trainer: Trainer, step: int) -> None:
    """Tell Ray Train the checkpoint of `step` was committed (a pointer only: the files live in our
    store). Every rank, at the same point (Ray Train's report synchronizes the ranks)."""
    import json
    import tempfile
    from pathlib import Path

    import ray.train

    with tempfile.TemporaryDirectory() as pointer_dir:
        Path(pointer_dir, "pointer.json").write_text(json.dumps({"step": step, "run": trainer.train.run}))
        checkpoint = ray.train.Checkpoint.from_directory(pointer_dir) if trainer.rank == 0 else None
        ray.train.report({"step": step}, checkpoint=checkpoint)
