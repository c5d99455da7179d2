"""The datasets a pretraining run trains on: one dataset (`train.dataset`, the default) or a
weighted mixture (`train.data`), each version pinned in `runs/<run>/run.json` at the first launch.

A relaunch under the same run name must ask for the same thing: the same datasets with the same
weights (and, where the config names one, the pinned version), the same seed and shuffle window.
Each of them changes the sample order, so resuming would not continue the run; a change is
refused with one line.
"""

from __future__ import annotations

from ..config.run import RunConfig
from ..errors import UserError
from ..records import DatasetVersion, PinnedSource, RunPin, SampleOrderPin, read_dataset
from ..storage import ObjectStore
from ..train.launch import pin_dataset

Sources = list[tuple[DatasetVersion, float]]


def describe(sources: list[PinnedSource] | list) -> str:
    return ", ".join(f"{s.dataset} v{s.dataset_version} x {s.weight:g}" for s in sources)


def pin_sources(store: ObjectStore, config: RunConfig, restart: bool = False) -> Sources:
    """(manifest, weight) of every dataset the run trains on, pinned at the first launch."""
    train = config.train
    order = SampleOrderPin(seed=train.seed, shuffle_window=train.shuffle_window)
    pinned, etag = RunPin.load(store, train.run)
    if pinned is not None and pinned.sample_order is None:
        pinned = _adopt_streaming_order(store, train.run, pinned, etag, order, restart)
    if pinned is not None:
        check_order(train.run, pinned, order)
    if train.data is None:
        if pinned is not None and pinned.data:
            raise UserError(
                f"run {train.run!r} trains on the mixture [{describe(pinned.data)}]; the config names one dataset: "
                "restore train.data or use another run name"
            )
        manifest = pin_dataset(store, config, sample_order=order)
        if pinned is None:  # a launch racing this one may have pinned first, with its own order
            check_order(train.run, RunPin.load(store, train.run)[0], order)
        return [(manifest, 1.0)]
    if pinned is None:
        manifests = [read_dataset(store, s.dataset, s.version) for s in train.data]
        sources = [(m, s.weight) for m, s in zip(manifests, train.data, strict=True)]
        check_compatible(sources)
        entries = [PinnedSource(dataset=m.dataset, dataset_version=m.version, weight=w) for m, w in sources]
        first = entries[0]
        pin = RunPin(dataset=first.dataset, dataset_version=first.dataset_version, data=entries, sample_order=order)
        if pin.create(store, train.run):
            return sources
        pinned, _ = RunPin.load(store, train.run)  # another launch pinned first: follow its pin
        check_order(train.run, pinned, order)
    return _resume(store, config, pinned)


def _adopt_streaming_order(
    store: ObjectStore, run: str, pinned: RunPin, etag: str | None, order: SampleOrderPin, restart: bool
) -> RunPin:
    """A run pinned before streaming read a permutation of all samples: its checkpoints cannot be
    continued in the streaming order. Without checkpoints (or with --restart) it adopts it."""
    from ..keys import RunKeys
    from ..train import checkpoint as ckpt

    if ckpt.inventory(store, RunKeys(run)).sound and not restart:
        raise UserError(
            f"run {run!r} has checkpoints from before streaming (its sample order was a permutation of all "
            "samples): resuming would read other samples than an uninterrupted run; use --restart or a new run name"
        )
    updated = pinned.model_copy(update={"sample_order": order})
    if not updated.swap(store, run, etag):
        raise UserError(f"run {run!r}: run.json changed while this launch read it; launch again")
    return updated


def check_order(run: str, pinned: RunPin, order: SampleOrderPin) -> None:
    """The seed and shuffle window the run was launched with (runs pinned before streaming have none)."""
    if pinned.sample_order is not None and pinned.sample_order != order:
        was = pinned.sample_order
        raise UserError(
            f"run {run!r} was launched with seed {was.seed} and shuffle_window {was.shuffle_window}, the config now "
            f"has seed {order.seed} and shuffle_window {order.shuffle_window}: that changes the sample order; restore "
            "them or use a new run name"
        )


def _resume(store: ObjectStore, config: RunConfig, pinned: RunPin) -> Sources:
    train = config.train
    have = pinned.data or [PinnedSource(dataset=pinned.dataset, dataset_version=pinned.dataset_version, weight=1.0)]
    asked = [(s.dataset, s.weight) for s in train.data]
    versions_ok = all(s.version in ("LATEST", p.dataset_version) for s, p in zip(train.data, have, strict=False))
    if asked != [(p.dataset, p.weight) for p in have] or not versions_ok:
        wanted = ", ".join(f"{s.dataset} {'v' + str(s.version) if s.version != 'LATEST' else 'LATEST'} x {s.weight:g}"
                           for s in train.data)  # fmt: skip
        raise UserError(
            f"run {train.run!r} was launched on the mixture [{describe(have)}], the config now asks for [{wanted}]: "
            "a changed mixture needs a new run name (init_from can warm-start it from this run)"
        )
    sources = [(read_dataset(store, p.dataset, p.dataset_version), p.weight) for p in have]
    check_compatible(sources)
    return sources


def check_compatible(sources: Sources) -> None:
    """Every dataset of a mixture must be tokenized alike: the model has one vocabulary and one context."""
    first, _ = sources[0]
    for manifest, _ in sources[1:]:
        if manifest.tokenizer.sha256 != first.tokenizer.sha256:
            raise UserError(
                f"mixture: {manifest.dataset} v{manifest.version} was tokenized with tokenizer "
                f"{manifest.tokenizer.sha256[:12]}, {first.dataset} v{first.version} with "
                f"{first.tokenizer.sha256[:12]}; "
                "every dataset of a mixture needs the same tokenizer (data.tokenizer.path)"
            )
        if (manifest.seq_len, manifest.dtype) != (first.seq_len, first.dtype):
            raise UserError(
                f"mixture: {manifest.dataset} v{manifest.version} has seq_len {manifest.seq_len} ({manifest.dtype}), "
                f"{first.dataset} v{first.version} has {first.seq_len} ({first.dtype}): rebuild one with the other's"
            )
