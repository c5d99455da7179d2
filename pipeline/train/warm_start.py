"""Warm start, worker side: loading another run's checkpoint as the start of this one.

What carries over, and why:

- **weights and AdamW moments** carry: the moments are the optimizer's per-parameter scale
  estimates for exactly these weights; dropping them would make the first steps on a trained
  model behave like the first steps of a fresh one (a loss spike unless the LR warms up for long).
- **the step count, LR schedule, data order and RNG do not**: the child has its own `max_steps`,
  so its schedule re-warms from step 0 and decays over its own budget (the usual recipe for
  continued pretraining), and it reads its own dataset version in its own order from sample 0.
  The parent's learning rate, weight decay and betas do not override the child's config either.

The driver decides the source once (pipeline/pretrain/warm_start.py, before any worker starts)
and records the lineage in `runs/<run>/run.json` under `init_from`; the workers load it through
the resume machinery (`checkpoint_manager.py`: per-rank download, universal conversion when the
layout differs). The lineage's `checkpoint` URI names the parent's checkpoint folder (with or
without the lease epoch, pipeline/keys.py); the driver pins it (`runs/<parent>/pins/<child>.json`)
so the parent's garbage collection leaves it alone until the child has committed its own first
checkpoint. Once the run has committed checkpoints of its own, those win and `init_from` is
ignored: the recorded lineage stays, because those checkpoints descend from it.
"""

from __future__ import annotations

from ..keys import CheckpointId, RunKeys
from ..records import TrainerState, WarmStartLineage, WarmStartPin
from ..storage import ObjectStore
from . import checkpoint as ckpt


def check_parent(saved: dict, current: dict, parent: str) -> None:
    """The parent's checkpoint loads only under the settings it was written with (as for a resume)."""
    changed = ckpt.changed_settings(saved, current)
    if changed:
        raise ckpt.ResumeError(
            f"train.init_from: run {parent!r} was trained with other settings ({'; '.join(changed)}); "
            "a warm start needs the same architecture, strategy and precision"
        )


# How long a pin protects the parent's checkpoint if the child never removes it (its driver died).
PIN_TTL_S = 24 * 3600.0


def parent_checkpoint(lineage: WarmStartLineage) -> CheckpointId:
    """The parent's checkpoint a lineage names: the folder at the end of its `checkpoint` URI (with
    the lease epoch since epochs are in the key), else the step's folder without epoch."""
    named = CheckpointId.parse(lineage.checkpoint.rstrip("/").rsplit("/", 1)[-1])
    return named if named is not None and named.step == lineage.step else CheckpointId(lineage.step)


def pin_parent(store: ObjectStore, lineage: WarmStartLineage, child: str, ttl_s: float = PIN_TTL_S) -> None:
    """Driver, before the workers start: keep the parent's checkpoint out of its GC."""
    WarmStartPin.for_child(child, parent_checkpoint(lineage), ttl_s).write(store, lineage.run)


def unpin_parent(store: ObjectStore, parent: str, child: str) -> None:
    """The child has a checkpoint of its own (or its launch ended): the parent may collect again."""
    WarmStartPin.delete(store, parent, child)


def parent_state(store: ObjectStore, lineage: WarmStartLineage) -> TrainerState:
    """Workers: the parent checkpoint's trainer state; a clear error if it was deleted since launch."""
    checkpoint = parent_checkpoint(lineage)
    try:
        return ckpt.read_state(store, RunKeys(lineage.run), checkpoint)
    except FileNotFoundError:
        raise ckpt.ResumeError(
            f"train.init_from: checkpoint {checkpoint.tag} of run {lineage.run!r} is gone "
            "(garbage-collected since launch); launch again to start from its newest checkpoint"
        ) from None
