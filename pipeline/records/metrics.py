"""Metrics rows: one per training step, stored in JSONL segments under `runs/<run>/metrics/`
(pipeline/train/metrics.py writes them). Rows stay dicts on the hot path (one per step); this
module is the one place that encodes and decodes them, and `MetricsRow` is their typed view."""

from __future__ import annotations

from typing import Any

from ..storage import ObjectStore
from .base import Record, decode_jsonl, encode_jsonl


class MetricsRow(Record):
    step: int
    time: float | None = None
    workers: int | None = None  # the attempt's world size (elastic runs change it)
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    data_wait_s: float | None = None
    compute_s: float | None = None
    checkpoint_stall_s: float | None = None  # the loop blocked by a checkpoint (save, wait for the previous upload)
    checkpoint_upload_s: float | None = None  # a checkpoint's background upload + commit, once it finished
    tokens: int | None = None
    peak: str | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    val_accuracy: float | None = None
    early_stopped: bool | None = None
    tokens_by_dataset: dict[str, int] | None = None  # cumulative, per dataset of the run's data
    epochs_by_dataset: dict[str, int] | None = None  # epochs begun (a dataset that ran out repeats)
    data_exhausted: str | None = None  # the run stopped where a dataset ran out (on_exhausted: stop)

    @property
    def step_s(self) -> float:
        return (self.data_wait_s or 0.0) + (self.compute_s or 0.0)


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    return encode_jsonl(rows)


def decode_rows(data: bytes) -> list[dict[str, Any]]:
    return decode_jsonl(data)


def read_segment(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    return decode_rows(store.read(key))


def read_segments(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    """Every row of the JSONL segments under `prefix`, in step order, as plain dicts."""
    rows: list[dict[str, Any]] = []
    for key in store.list(prefix):
        if key.endswith(".jsonl"):
            rows += read_segment(store, key)
    return rows


def read_rows(store: ObjectStore, prefix: str) -> list[MetricsRow]:
    """Every metrics row under `prefix`, in step order."""
    return [MetricsRow.from_dict(row) for row in read_segments(store, prefix)]


def last_row(store: ObjectStore, prefix: str) -> MetricsRow | None:
    """The newest row of the newest segment (progress display), or None."""
    segments = store.list(prefix)
    rows = decode_rows(store.read(segments[-1])) if segments else []
    return MetricsRow.from_dict(rows[-1]) if rows else None
