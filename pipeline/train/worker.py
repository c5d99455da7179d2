"""Entry point of every Ray Train worker: the training loop at a glance (steps in `trainer.py`)."""

from __future__ import annotations

import torch

from .spec import WorkerSpec
from .trainer import Trainer


def train_worker(spec: WorkerSpec) -> None:
    import ray.train

    context = ray.train.get_context()
    device = ray.train.torch.get_device() if spec.use_gpu else torch.device("cpu")
    trainer = Trainer(spec, context.get_world_rank(), context.get_local_rank(), context.get_world_size(), device)
    while trainer.step < trainer.stop_at:
        row = trainer.train_step()
        trainer.maybe_evaluate(row)
        if trainer.maybe_checkpoint():
            _report(trainer)
    trainer.export()


def _report(trainer: Trainer) -> None:
    """Tell Ray Train a checkpoint was committed (a pointer only: the files live in our store)."""
    import json
    import tempfile
    from pathlib import Path

    import ray.train

    with tempfile.TemporaryDirectory() as pointer_dir:
        Path(pointer_dir, "pointer.json").write_text(json.dumps({"step": trainer.step, "run": trainer.train.run}))
        checkpoint = ray.train.Checkpoint.from_directory(pointer_dir) if trainer.rank == 0 else None
        ray.train.report({"step": trainer.step}, checkpoint=checkpoint)
