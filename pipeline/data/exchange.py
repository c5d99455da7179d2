"""Hash-partitioned exchange of Arrow tables through object storage: the data stage's shuffle.

A shuffle whose map tasks return one Ray object per (block, partition) pair makes blocks x
partitions objects, all owned by the driver, and the small ones (under Ray's 100 KiB inline limit)
live in the driver's own memory: at a terabyte that is 10^7-10^8 objects. Here a map task writes
ONE file holding all its partitions, one after another behind a header of byte offsets (or no
file when it has nothing to send), and returns whether it wrote; a reduce task reads its
partition's byte range from every map file that was written. Map file i's key follows from i, so
the driver keeps which maps wrote (`Source`) and never a reference per file: with the task window
of `blocks.run`, its references do not grow with the corpus. The cost that does grow is ranged
reads: 2 x (maps that wrote) x partitions per exchange.

The files live under the build's scratch prefix (`<dataset>/tmp/<run>/`, `Scratch`) on the
storage that holds the shards: the one medium every node of a cluster shares and whose size
is not a node's disk. They are deleted when the build ends; a crashed build's are deleted by the
next build of the dataset (which holds the writer lease, so no other build is running).

A map file: `MAGIC`, then `parts + 1` little-endian uint64 offsets (from the end of the header),
then each partition as an Arrow IPC stream (an empty partition has no bytes). A reducer reads 16
bytes of the header and one byte range per map file: two ranged GETs, never the whole header (a
header is 8 bytes x partitions; every reducer reading every header would be quadratic).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..storage import StorageSettings
from .readers import _store

MAGIC = b"SORAX001"
READ_THREADS = 16  # ranged GETs in flight per reducer: S3 latency, not bandwidth, bounds one GET


@dataclass(frozen=True)
class Exchange:
    """Where one shuffle's map files go: `prefix` on the store at `root`, `parts` partitions."""

    root: str
    settings: StorageSettings
    prefix: str
    parts: int

    def key(self, index: int) -> str:
        return f"{self.prefix}/map-{index:06d}.bin"


@dataclass(frozen=True)
class Scratch:
    """A build's scratch area on storage (`<dataset>/tmp/<run>`): `scratch(name, parts)` is the
    exchange `name` of the build. Everything under it is deleted when the build ends."""

    root: str
    settings: StorageSettings
    prefix: str

    def __call__(self, name: str, parts: int) -> Exchange:
        return Exchange(self.root, self.settings, f"{self.prefix}/{name}", parts)


def encode(tables: list[pa.Table]) -> bytes:
    """One map file: the header of offsets, then each non-empty partition as an IPC stream (its
    chunks written as they are, into one buffer). Takes ownership of `tables`: each partition is
    dropped from the list once written, so a map task holds its rows or their encoding, not both."""
    sink = pa.BufferOutputStream()
    offsets = [0]
    for index, table in enumerate(tables):
        tables[index] = None
        if table is not None and table.num_rows:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        del table
        offsets.append(sink.tell())
    body = sink.getvalue()
    return b"".join([MAGIC, struct.pack(f"<{len(offsets)}Q", *offsets), memoryview(body)])


def write_map(exchange: Exchange, index: int, tables: list[pa.Table]) -> str | None:
    """Write map task `index`'s partitions; returns the file's key (None when all are empty)."""
    if len(tables) != exchange.parts:
        raise ValueError(f"{len(tables)} partitions for an exchange of {exchange.parts}")
    if not any(t is not None and t.num_rows for t in tables):
        return None
    key = exchange.key(index)
    _store(exchange.root, exchange.settings).write(key, encode(list(tables) if isinstance(tables, tuple) else tables))
    return key


def _read_one(exchange: Exchange, key: str, part: int) -> pa.Table | None:
    store = _store(exchange.root, exchange.settings)
    # A file its writer reported written must be there: a missing one raises (never read as empty).
    start, end = struct.unpack("<2Q", store.read_range(key, len(MAGIC) + 8 * part, 16))
    if end <= start:
        return None
    header = len(MAGIC) + 8 * (exchange.parts + 1)
    body = store.read_range(key, header + start, end - start)
    return pa.ipc.open_stream(pa.py_buffer(body)).read_all()


@dataclass(frozen=True)
class Source:
    """An exchange and the map files its writers reported written (the others had nothing to send
    and wrote no file: they are never read, so a reducer costs no request for them)."""

    exchange: Exchange
    present: tuple[int, ...]


def read_partition(sources: tuple[Source, ...], part: int) -> pa.Table | None:
    """Partition `part` of every written map file of `sources`, concatenated (map order kept);
    None when empty."""
    reads = [(source.exchange, source.exchange.key(i)) for source in sources for i in source.present]
    if not reads:
        return None
    with ThreadPoolExecutor(min(READ_THREADS, len(reads)), thread_name_prefix="exchange-read") as pool:
        tables = [t for t in pool.map(lambda read: _read_one(read[0], read[1], part), reads) if t is not None]
    return pa.concat_tables(tables, promote_options="default") if tables else None


# -- the task bodies (run by `blocks.run`) --------------------------------------------------------


def map_task(fn: Callable, exchange: Exchange, index: int, *args: Any) -> tuple[bool, Any]:
    """`fn(*args)` -> partition tables, or (tables, extra); writes them as map file `index`;
    returns (whether a file was written, extra)."""
    out = fn(*args)
    tables, extra = out if isinstance(out, tuple) else (out, None)
    del out  # `write_map` frees each partition once encoded
    return write_map(exchange, index, tables) is not None, extra


def reduce_task(fn: Callable, part: int, into, own: tuple, sources: tuple[Source, ...], *shared: Any) -> Any:
    """`fn(partition or None, *own, *shared)` for partition `part` of `sources`. `into` says where
    its output goes: None (returned), (an `Exchange`, map index) (written as that map file; returns
    like `map_task`) or a key (a table stored there; returns (key, rows)). Stored own arguments
    are read only for a non-empty partition (None otherwise): a reducer with nothing to do reads
    nothing."""
    table = read_partition(sources, part)
    root, settings = sources[0].exchange.root, sources[0].exchange.settings
    own = tuple(None if table is None and o.stored else o.get(root, settings) for o in own)
    out = fn(table, *own, *shared)
    if into is None:
        return out
    if isinstance(into, tuple):
        exchange, index = into
        tables, extra = out if isinstance(out, tuple) else (out, None)
        return write_map(exchange, index, tables) is not None, extra
    from .blocks import write_table

    return write_table(root, settings, into, out), out.num_rows
