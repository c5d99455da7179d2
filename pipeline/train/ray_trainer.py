"""Ray Train's `TorchTrainer` without its Ray Data plumbing, which Sora does not use.

At every worker-group start Ray Train's default `DatasetsCallback` starts a `DatasetManager` actor
(a Python process importing Ray Data) and pushes Ray Data's `DataContext` to every worker, which
imports Ray Data there too, even when the trainer has no `datasets`. Sora's workers read their own
shards (loader.py), so on the recovery path after a lost worker that is CPU time taken from the
restarting workers for nothing (bench/recovery.py measures the gain). Ray 2.60 internals
(`_create_default_callbacks`, `DatasetsCallback`); the lock file pins Ray.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback


class SoraTorchTrainer(TorchTrainer):
    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:  # never in Sora; kept correct if a caller passes datasets
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
