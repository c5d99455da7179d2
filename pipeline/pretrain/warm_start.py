"""Warm start (`train.init_from`), driver side: a pretrain run that begins from another run's newest
committed checkpoint, typically on a newer dataset version after a scheduled refresh.

The driver decides the source once (`plan`, under the run lease, before any worker starts) and
records the lineage in `runs/<run>/run.json` under `init_from`, and pins the parent's checkpoint
(`runs/<parent>/pins/<child>.json`) so the parent's garbage collection keeps it while the child
downloads it; the child's first commit (or the end of the launch, `unpin`) removes the pin. What
carries over and how the workers load it is in pipeline/train/warm_start.py. Fine-tune runs never
warm-start this way.
"""

from __future__ import annotations

from sora import SoraConfig

from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys
from ..records import COMMITTED, DatasetVersion, RunPin, WarmStartLineage, read_dataset
from ..storage import ObjectStore
from ..train import checkpoint as ckpt
from ..train.universal import check_convertible
from ..train.warm_start import check_parent, parent_checkpoint, pin_parent, unpin_parent


def plan(
    store: ObjectStore, config: RunConfig, manifest: DatasetVersion, model_config: SoraConfig, resume_step: int | None
) -> WarmStartLineage | None:
    """Driver, under the run lease: the warm-start lineage of this launch (None: none).

    A run that resumes its own checkpoint keeps the lineage recorded when it started. Otherwise
    `train.init_from` is checked (a committed, sound checkpoint; same architecture, strategy and
    tokenizer) and recorded in `run.json`; a bad parent is one `UserError` before Ray starts.
    A launch that will warm-start pins the parent's checkpoint (`unpin` removes the pin).
    """
    train = config.train
    pinned, etag = RunPin.load(store, train.run)
    recorded = pinned.init_from if pinned else None
    if resume_step is not None:
        return recorded
    lineage = _parent_lineage(store, config, manifest, model_config) if train.init_from is not None else None
    if recorded != lineage and not pinned.with_lineage(lineage).swap(store, train.run, etag):
        raise UserError(f"run {train.run!r}: run.json changed during launch; is another launch running?")
    if lineage is not None:
        pin_parent(store, lineage, train.run)
        # The parent's GC may have chosen this checkpoint before it saw the pin: check it is still there.
        parent = RunKeys(lineage.run)
        if not store.exists(parent.checkpoint_file(parent_checkpoint(lineage), COMMITTED)):
            unpin_parent(store, lineage.run, train.run)
            raise UserError(
                f"train.init_from: checkpoint {parent_checkpoint(lineage).tag} of run {lineage.run!r} was "
                "garbage-collected during launch; launch again to start from its newest checkpoint"
            )
    return lineage


def unpin(store: ObjectStore, lineage: WarmStartLineage | None, child: str) -> None:
    """End of a launch: drop the child's pin on its warm-start parent (if any; idempotent)."""
    if lineage is not None:
        unpin_parent(store, lineage.run, child)


def _parent_lineage(
    store: ObjectStore, config: RunConfig, manifest: DatasetVersion, model_config: SoraConfig
) -> WarmStartLineage:
    """The newest sound checkpoint of `train.init_from`, checked against this run's settings."""
    train = config.train
    if train.init_from == train.run:
        raise UserError(f"train.init_from names run {train.run!r} itself; name the run to start from")
    parent = RunKeys(train.init_from)
    found = ckpt.inventory(store, parent)
    if not found.sound:
        detail = f" ({found.describe()})" if found.broken or found.uncommitted else ""
        raise UserError(
            f"train.init_from: run {parent.run!r} has no committed checkpoint under "
            f"{store.uri(parent.checkpoints)}{detail}; train it first or name another run"
        )
    newest = found.sound[0]
    state = ckpt.read_state(store, parent, newest)
    # bf16 is decided on the workers (their hardware); they check it again (`check_parent`).
    current = ckpt.compatibility_fields(train, model_config.to_dict(), state.bf16)
    check_parent(state.compatibility, current, parent.run)
    check_convertible(state, train, f"train.init_from: run {parent.run!r}'s checkpoint {newest.tag}")
    source = read_dataset(store, state.dataset, state.dataset_version)
    if source.tokenizer.sha256 != manifest.tokenizer.sha256:
        raise UserError(
            f"train.init_from: run {parent.run!r} was trained with another tokenizer ({state.dataset} "
            f"v{state.dataset_version}) than {manifest.dataset} v{manifest.version} uses; "
            "its weights would read other tokens"
        )
    checkpoint = store.uri(parent.checkpoint(newest))
    return WarmStartLineage(
        run=parent.run,
        step=newest.step,
        dataset=state.dataset,
        dataset_version=state.dataset_version,
        checkpoint=checkpoint,
    )
