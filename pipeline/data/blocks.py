"""Blocks of Arrow records stored as files on the build's scratch area, and the operations the data
stage runs on them as plain Ray tasks: a map (one task per block), a cut of each block into a few
pieces, and the hash-partitioned shuffle, whose map and reduce sides exchange data through files
(`exchange.py`).

Why files and not the Ray object store: at a terabyte the record blocks do not fit in a cluster's
object stores (they would spill to the nodes' own disks), and every object a task returns is
owned by the driver. Here the driver holds the blocks' keys (one string per block) and at most
`window` task references at a time (`run`), so its object count does not grow with the corpus;
every task reads its inputs from storage and writes its outputs there, and a retried task
rewrites the same keys.

Why tasks and not a Ray Data operator per step: every step of the data stage is a whole-block
function over blocks that are already materialized (the dedup decision and the tokenizer are global
barriers between them). Ray Data plans and starts a streaming executor for each such pass, measured
at 0.16-1.1 s per pass on 2 cores, against 0.02-0.05 s for a round of tasks; the stage has a dozen
passes. Ray still does what matters at scale: scheduling on every node, retrying tasks of a lost
worker. Every task is submitted through `task`, with the data stage's placement (`placement.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..ray_runtime import get_result
from . import placement, task_memory
from .exchange import Exchange, Scratch, Source, map_task, reduce_task
from .readers import _store

_REMOTES: dict[Callable, Any] = {}


def task(body: Callable, name: str | Callable, **options: Any):
    """The Ray remote function of `body`, named (the dashboard and timeline show the step, not the
    generic runner) and placed like every data-stage task (`placement.task_options`)."""
    import ray

    if body not in _REMOTES:
        _REMOTES[body] = ray.remote(_releasing(body))
    label = name if isinstance(name, str) else getattr(name, "__name__", type(name).__name__)
    return _REMOTES[body].options(name=label, **{**placement.task_options(), **options})


def _releasing(body: Callable) -> Callable:
    """`body`, then Arrow's freed memory handed back to the system: Ray reuses a worker for many
    tasks, and Arrow's allocator keeps freed pages, so without it a worker's memory is the
    high-water mark of every task it ran rather than of the largest one."""

    name = getattr(body, "__name__", "task")

    def released(*args: Any) -> Any:
        started = task_memory.start()
        try:
            return body(*args)
        finally:
            pa.default_memory_pool().release_unused()
            task_memory.finish(getattr(args[0], "__name__", name) if args else name, started)

    released.__name__ = released.__qualname__ = name
    return released


def run(
    body: Callable, name: str | Callable, calls: Iterable[tuple], shared: tuple = (), track=None, **options: Any
) -> list:
    """`body(*call, *shared)` for every call, as Ray tasks (with `options`); returns the (small)
    results in call order. The driver's tasks in flight, across every thread that runs tasks at
    once (the rejects and index writers run beside the tokenizer), are at most
    `placement.window()`: the driver never holds more references than that, whatever the number of
    calls. `track(done, total)` reports progress."""
    import ray

    remote, shared, slots = task(body, name, **options), _shared(shared), _slots()
    calls = list(calls)
    results: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    submitted = done = 0
    try:
        while submitted < len(calls) or pending:
            # Block for a slot only with nothing of ours to wait for (another thread holds them all).
            while submitted < len(calls) and slots.acquire(blocking=not pending):
                pending[remote.remote(*calls[submitted], *shared)] = submitted
                submitted += 1
            # The first task to finish, then every other finished one (one pass over the window,
            # not one per task), without pulling results to this node before `ray.get`.
            finished, rest = ray.wait(list(pending), num_returns=1, fetch_local=False)
            if rest:
                finished += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
            for ref in finished:
                index = pending.pop(ref)
                slots.release()
                results[index] = get_result(ref)
                done += 1
            if track is not None and finished:
                track(done, len(calls))
    finally:
        for ref in pending:  # a task failed: the others are cancelled, their slots given back
            ray.cancel(ref)
            slots.release()
    return results


_WINDOW: dict[str, Any] = {"size": 0, "slots": None}
_WINDOW_LOCK = threading.Lock()


def _slots() -> threading.BoundedSemaphore:
    with _WINDOW_LOCK:
        if _WINDOW["size"] != placement.window():
            _WINDOW.update(size=placement.window(), slots=threading.BoundedSemaphore(placement.window()))
        return _WINDOW["slots"]


def _shared(args: tuple) -> tuple:
    """Arguments every task of a round gets: large ones stored once (not pickled into each task),
    small ones (configs, counts) inline, so a round holds no object for them."""
    import ray

    return tuple(a if isinstance(a, ray.ObjectRef) or not _large(a) else ray.put(a) for a in args)


def _large(value: Any) -> bool:
    import pickle

    if value is None or isinstance(value, (bool, int, float)):
        return False
    try:
        return len(pickle.dumps(value, protocol=5)) > SHARED_INLINE_BYTES
    except (pickle.PicklingError, TypeError, AttributeError):
        return True


SHARED_INLINE_BYTES = 64 << 10  # Ray inlines task arguments under 100 KiB in the task itself


def read_table(root: str, settings, key: str) -> pa.Table:
    return pa.ipc.open_file(pa.py_buffer(_store(root, settings).read(key))).read_all()


def write_table(root: str, settings, key: str, table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    _store(root, settings).write(key, sink.getvalue().to_pybytes())
    return key


@dataclass(frozen=True)
class Own:
    """Block i's own extra argument: a small value, or (`stored`) the key of a table to read."""

    value: Any
    stored: bool = False

    def get(self, root: str, settings) -> Any:
        return read_table(root, settings, self.value) if self.stored else self.value


def _own(each: Blocks | list | None, n: int) -> list[tuple]:
    if each is None:
        return [()] * n
    if len(each) != n:
        raise ValueError(f"{len(each)} per-task arguments for {n} tasks")
    if isinstance(each, Blocks):
        return [(Own(key, key is not None),) for key in each.keys]
    return [(Own(value),) for value in each]


def _args(root: str, settings, key: str | None, own: tuple) -> tuple:
    table = read_table(root, settings, key) if key is not None else None
    return (table, *(o.get(root, settings) for o in own))


def _map_body(fn: Callable, root: str, settings, key: str, out: str, own: tuple, *shared: Any) -> str:
    return write_table(root, settings, out, fn(*_args(root, settings, key, own), *shared))


def _collect_body(fn: Callable, root: str, settings, key: str, own: tuple, *shared: Any) -> Any:
    return fn(*_args(root, settings, key, own), *shared)


def _cut_body(fn: Callable, root: str, settings, key: str, outs: list[str], own: tuple, *shared: Any) -> list[str]:
    pieces = fn(*_args(root, settings, key, own), *shared)
    return [write_table(root, settings, out, piece) for out, piece in zip(outs, pieces, strict=True)]


def _shuffle_body(fn: Callable, into: Exchange, index: int, key: str, own: tuple, *shared: Any) -> Any:
    return map_task(fn, into, index, *_args(into.root, into.settings, key, own), *shared)


class Blocks:
    """Arrow tables stored as files (`keys`, one per block) on `scratch`'s storage."""

    def __init__(self, keys: list[str], scratch: Scratch, rows: list[int] | None = None) -> None:
        self.keys = list(keys)
        self.scratch = scratch
        self.rows = rows  # rows per block, when the writer reported them

    def __len__(self) -> int:
        return len(self.keys)

    def tables(self) -> list[pa.Table]:
        """Every block, read here (for inspection and tests: a corpus's blocks do not fit a driver)."""
        return [read_table(self.scratch.root, self.scratch.settings, key) for key in self.keys]

    def _key(self, name: str, i: int) -> str:
        return f"{self.scratch.prefix}/{name}/block-{i:06d}.arrow"

    def map(self, fn: Callable[..., pa.Table], into: str, *args: Any, each=None, track=None) -> Blocks:
        """`fn(table, *args) -> table` on every block, as tasks, stored as the blocks `into`. With
        `each` (one value per block, or `Blocks` whose tables are read), block i's task gets
        `each[i]` right after its table: `fn(table, each[i], *args)`."""
        where = (self.scratch.root, self.scratch.settings)
        own = _own(each, len(self))
        calls = [(fn, *where, key, self._key(into, i), own[i]) for i, key in enumerate(self.keys)]
        return Blocks(run(_map_body, fn, calls, args, track), self.scratch)

    def collect(self, fn: Callable[..., Any], *args: Any, each=None, track=None) -> list:
        """`fn(table, *args)` on every block (`each` as in `map`); the small results come back."""
        where = (self.scratch.root, self.scratch.settings)
        own = _own(each, len(self))
        return run(_collect_body, fn, [(fn, *where, key, own[i]) for i, key in enumerate(self.keys)], args, track)

    def cut(self, fn: Callable[..., list[pa.Table]], into: str, pieces: int, *args: Any, each=None) -> Blocks:
        """Every block cut by `fn(table, *args) -> pieces tables` into `pieces` blocks `into`."""
        where = (self.scratch.root, self.scratch.settings)
        own = _own(each, len(self))
        calls = [
            (fn, *where, key, [self._key(into, i * pieces + j) for j in range(pieces)], own[i])
            for i, key in enumerate(self.keys)
        ]
        return Blocks([k for keys in run(_cut_body, fn, calls, args) for k in keys], self.scratch)

    def shuffle(self, fn: Callable[..., Any], into: Exchange, *args: Any, each=None, track=None) -> Written:
        """Shuffle map side: `fn(table, *args)` returns `into.parts` tables (or (tables, extra)),
        which block i's task writes as map file i of `into` (`exchange.py`)."""
        own = _own(each, len(self))
        calls = [(fn, into, i, key, own[i]) for i, key in enumerate(self.keys)]
        return Written.of(into, run(_shuffle_body, fn, calls, args, track))


@dataclass
class Written:
    """The written map files of one or more exchanges of the same partitions (`sources`), and what
    each writer returned besides its file (small: counts), in writer order."""

    sources: tuple[Source, ...]
    extras: list

    @staticmethod
    def of(into: Exchange, results: list[tuple[bool, Any]]) -> Written:
        present = tuple(i for i, (written, _) in enumerate(results) if written)
        return Written((Source(into, present),), [extra for _, extra in results])

    @property
    def parts(self) -> int:
        return self.sources[0].exchange.parts

    def plus(self, other: Written) -> Written:
        """Both exchanges' files, read together by each reducer (partition p of each)."""
        return Written(self.sources + other.sources, self.extras + other.extras)

    def _run(self, fn: Callable, into: list, args: tuple, each, partitions, track=None) -> list:
        partitions = list(range(self.parts) if partitions is None else partitions)
        own = _own(each, len(partitions))
        calls = [(fn, p, into[i], own[i]) for i, p in enumerate(partitions)]
        return run(reduce_task, fn, calls, (self.sources, *args), track)

    def reduce(self, fn: Callable[..., Any], *args: Any, each=None, partitions=None, track=None) -> list:
        """Shuffle reduce side: `fn(partition table or None, *own, *args)` per partition (all, or
        `partitions`), as tasks; returns the (small) results."""
        n = self.parts if partitions is None else len(partitions)
        return self._run(fn, [None] * n, args, each, partitions, track)

    def reduce_into(
        self, fn: Callable[..., Any], into: Exchange, *args: Any, each=None, partitions=None, track=None
    ) -> Written:
        """A reduce whose outputs are the next exchange's map files: `fn(...)` returns
        `into.parts` tables (or (tables, extra)); the i-th reduced partition writes `into`'s file i."""
        n = self.parts if partitions is None else len(partitions)
        return Written.of(into, self._run(fn, [(into, i) for i in range(n)], args, each, partitions, track))

    def reduce_to(
        self, fn: Callable[..., pa.Table], scratch: Scratch, name: str, *args: Any, each=None, partitions=None
    ) -> Blocks:
        """A reduce whose outputs are stored as the blocks `name`, one per reduced partition (their
        row counts in `Blocks.rows`)."""
        n = self.parts if partitions is None else len(partitions)
        keys = [f"{scratch.prefix}/{name}/block-{i:06d}.arrow" for i in range(n)]
        results = self._run(fn, keys, args, each, partitions)
        return Blocks([key for key, _ in results], scratch, [rows for _, rows in results])


def split_by(table: pa.Table, part: np.ndarray, parts: int) -> list[pa.Table]:
    """`table`'s rows split into `parts` tables by their partition id `part` (row order kept within
    each). `take`, not `slice`: a slice would carry (and serialize) the whole table's buffers."""
    order = np.argsort(part, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=parts))])
    return [table.take(pa.array(order[bounds[p] : bounds[p + 1]])) for p in range(parts)]
