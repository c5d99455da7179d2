"""Wall time per stage of a run, stored next to it so the report can show where time went."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

from ..keys import RunKeys
from ..storage import ObjectStore

STAGES = ("data", "pretrain", "finetune", "evaluate")


def _key(run: str, stage: str) -> str:
    return f"{RunKeys(run).prefix}/timings/{stage}.json"


@contextmanager
def timed(store: ObjectStore, run: str, stage: str):
    """Record the stage's wall time when it completes (`outcome['skipped']` marks a no-op rerun).

    A skipped stage keeps the timing of the run that did the work: the report shows what the
    stage cost, not what the check for "already done" cost.
    """
    outcome: dict = {}
    started = time.time()
    yield outcome
    finished = time.time()
    if outcome.get("skipped") and store.exists(_key(run, stage)):
        return
    record = {"stage": stage, "started": started, "finished": finished, "wall_s": round(finished - started, 2)}
    store.write(_key(run, stage), json.dumps(record).encode())


def read_timings(store: ObjectStore, run: str) -> dict[str, dict]:
    out = {}
    for stage in STAGES:
        try:
            out[stage] = json.loads(store.read(_key(run, stage)))
        except FileNotFoundError:
            continue
    return out
