"""Wall time per stage of a run, stored next to it so the report can show where time went."""

from __future__ import annotations

import time
from contextlib import contextmanager

from ..keys import RunKeys
from ..records import StageTiming
from ..storage import ObjectStore

STAGES = ("data", "pretrain", "finetune", "distill", "quantize", "evaluate")


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
    if outcome.get("skipped") and store.exists(RunKeys(run).timing(stage)):
        return
    StageTiming(stage=stage, started=started, finished=finished, wall_s=round(finished - started, 2)).write(store, run)


def read_timings(store: ObjectStore, run: str) -> dict[str, StageTiming]:
    timings = {stage: StageTiming.load(store, run, stage) for stage in STAGES}
    return {stage: timing for stage, timing in timings.items() if timing is not None}
