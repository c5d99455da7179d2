"""Warm start (`train.init_from`): a pretrain run that begins from another run's newest committed
checkpoint, typically on a newer dataset version after a scheduled refresh.

What carries over, and why:

- **weights and AdamW moments** carry: the moments are the optimizer's per-parameter scale
  estimates for exactly these weights; dropping them would make the first steps on a trained
  model behave like the first steps of a fresh one (a loss spike unless the LR warms up for long).
- **the step count, LR schedule, data order and RNG do not**: the child has its own `max_steps`,
  so its schedule re-warms from step 0 and decays over its own budget (the usual recipe for
  continued pretraining), and it reads its own dataset version in its own order from sample 0.
  The parent's learning rate, weight decay and betas do not override the child's config either.

The driver decides the source once (`plan`, before any worker starts) and records the lineage in
`runs/<run>/run.json` under `init_from`; the workers load it through the resume machinery of
`checkpoint.py` (per-rank download, universal conversion when the layout differs). Once the run
has committed checkpoints of its own, those win and `init_from` is ignored: the recorded lineage
stays, because those checkpoints descend from it. Fine-tune runs never warm-start this way.
"""

from __future__ import annotations

import json

from sora import SoraConfig

from ..config.run import RunConfig
from ..data.manifest import read_version
from ..errors import UserError
from ..keys import RunKeys
from ..storage import ObjectStore
from . import checkpoint as ckpt


def plan(
    store: ObjectStore, config: RunConfig, manifest: dict, model_config: SoraConfig, resume_step: int | None
) -> dict | None:
    """Driver, under the run lease: the warm-start lineage of this launch (None: none).

    A run that resumes its own checkpoint keeps the lineage recorded when it started. Otherwise
    `train.init_from` is checked (a committed, sound checkpoint; same architecture, strategy and
    tokenizer) and recorded in `run.json`; a bad parent is one `UserError` before Ray starts.
    """
    train, keys = config.train, RunKeys(config.train.run)
    pinned, etag = _read_pin(store, keys)
    if resume_step is not None:
        return pinned.get("init_from")
    lineage = None
    if train.init_from is not None:
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
        saved = state.get("compatibility", {})
        # bf16 is decided on the workers (their hardware); they check it again (`check_parent`).
        check_parent(saved, ckpt.compatibility_fields(train, model_config.to_dict(), saved.get("bf16")), parent.run)
        source = read_version(store, state["dataset"], state["dataset_version"])
        if source["tokenizer"]["sha256"] != manifest["tokenizer"]["sha256"]:
            raise UserError(
                f"train.init_from: run {parent.run!r} was trained with another tokenizer ({state['dataset']} "
                f"v{state['dataset_version']}) than {manifest['dataset']} v{manifest['version']} uses; "
                "its weights would read other tokens"
            )
        lineage = {
            "run": parent.run,
            "step": step,
            "dataset": state["dataset"],
            "dataset_version": state["dataset_version"],
            "checkpoint": store.uri(parent.checkpoint(step)),
        }
    if pinned.get("init_from") != lineage:
        updated = {k: v for k, v in pinned.items() if k != "init_from"}
        if lineage:
            updated["init_from"] = lineage
        if store.swap(keys.pin, json.dumps(updated).encode(), etag) is None:
            raise UserError(f"run {train.run!r}: run.json changed during launch; is another launch running?")
    return lineage


def check_parent(saved: dict, current: dict, parent: str) -> None:
    """The parent's checkpoint loads only under the settings it was written with (as for a resume)."""
    changed = ckpt.changed_settings(saved, current)
    if changed:
        raise ckpt.ResumeError(
            f"train.init_from: run {parent!r} was trained with other settings ({'; '.join(changed)}); "
            "a warm start needs the same architecture, strategy and precision"
        )


def parent_state(store: ObjectStore, lineage: dict) -> dict:
    """Workers: the parent checkpoint's trainer state; a clear error if it was deleted since launch."""
    try:
        return ckpt.read_state(store, RunKeys(lineage["run"]), lineage["step"])
    except FileNotFoundError:
        raise ckpt.ResumeError(
            f"train.init_from: checkpoint {ckpt.tag_for(lineage['step'])} of run {lineage['run']!r} is gone "
            "(garbage-collected since launch); launch again to start from its newest checkpoint"
        ) from None


def _read_pin(store: ObjectStore, keys: RunKeys) -> tuple[dict, str | None]:
    found = store.read_with_etag(keys.pin)
    return (json.loads(found[0]), found[1]) if found else ({}, None)
