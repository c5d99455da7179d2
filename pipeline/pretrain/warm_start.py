"""Warm start (`train.init_from`), driver side: a pretrain run that begins from another run's newest
committed checkpoint, typically on a newer dataset version after a scheduled refresh.

The driver decides the source once (`plan`, under the run lease, before any worker starts) and
records the lineage in `runs/<run>/run.json` under `init_from`; what carries over and how the
workers load it is in pipeline/train/warm_start.py. Fine-tune runs never warm-start this way.
"""

from __future__ import annotations

from sora import SoraConfig

from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys
from ..records import DatasetVersion, RunPin, WarmStartLineage, read_dataset
from ..storage import ObjectStore
from ..train import checkpoint as ckpt
from ..train.warm_start import check_parent


def plan(
    store: ObjectStore, config: RunConfig, manifest: DatasetVersion, model_config: SoraConfig, resume_step: int | None
) -> WarmStartLineage | None:
    """Driver, under the run lease: the warm-start lineage of this launch (None: none).

    A run that resumes its own checkpoint keeps the lineage recorded when it started. Otherwise
    `train.init_from` is checked (a committed, sound checkpoint; same architecture, strategy and
    tokenizer) and recorded in `run.json`; a bad parent is one `UserError` before Ray starts.
    """
    train = config.train
    pinned, etag = RunPin.load(store, train.run)
    recorded = pinned.init_from if pinned else None
    if resume_step is not None:
        return recorded
    lineage = _parent_lineage(store, config, manifest, model_config) if train.init_from is not None else None
    if recorded != lineage and not pinned.with_lineage(lineage).swap(store, train.run, etag):
        raise UserError(f"run {train.run!r}: run.json changed during launch; is another launch running?")
    return lineage


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
    step = found.sound[0]
    state = ckpt.read_state(store, parent, step)
    # bf16 is decided on the workers (their hardware); they check it again (`check_parent`).
    current = ckpt.compatibility_fields(train, model_config.to_dict(), state.bf16)
    check_parent(state.compatibility, current, parent.run)
    source = read_dataset(store, state.dataset, state.dataset_version)
    if source.tokenizer.sha256 != manifest.tokenizer.sha256:
        raise UserError(
            f"train.init_from: run {parent.run!r} was trained with another tokenizer ({state.dataset} "
            f"v{state.dataset_version}) than {manifest.dataset} v{manifest.version} uses; "
            "its weights would read other tokens"
        )
    checkpoint = store.uri(parent.checkpoint(step))
    return WarmStartLineage(
        run=parent.run, step=step, dataset=state.dataset, dataset_version=state.dataset_version, checkpoint=checkpoint
    )
