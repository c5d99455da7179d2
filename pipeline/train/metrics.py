"""Training metrics: per-step JSONL segments in the run folder, TensorBoard, and MFU.

Object stores have no append, and rewriting the whole history at every flush costs O(steps) per
flush (O(steps^2) per run). So rows go into segments `runs/<run>/metrics/part-<first step>.jsonl`
of at most `SEGMENT_ROWS` rows: a flush rewrites only the open segment, and a full segment is
never written again. On resume at step S, rows after S are cut from the segments (the steps are
redone), so the files always describe the run as it actually progressed. TensorBoard event files
are uploaded when a checkpoint commits and at the end, each file once it is closed.
`read_rows` joins the segments back into one list of rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..keys import RunKeys
from ..records.metrics import encode_rows, read_segment, read_segments
from ..storage import ObjectStore

if TYPE_CHECKING:
    import torch

SEGMENT_ROWS = 1000


def _segment_key(prefix: str, first_step: int) -> str:
    return f"{prefix}/part-{first_step:08d}.jsonl"


def read_rows(store: ObjectStore, prefix: str) -> list[dict]:
    """Every row of the segments under `prefix`, in step order, as plain dicts (metrics rows, or
    the sample-id rows under `keys.samples`; `pipeline.records.read_rows` gives typed metrics rows)."""
    return read_segments(store, prefix)


class SegmentLog:
    """Append-only JSONL rows under `prefix`, one open segment rewritten per flush."""

    def __init__(self, store: ObjectStore, prefix: str, resume_step: int) -> None:
        self.store, self.prefix = store, prefix
        self.open: list[dict] = []
        self.open_key: str | None = None
        self._cut_after(resume_step)

    def _cut_after(self, step: int) -> None:
        for key in sorted(self.store.list(self.prefix), reverse=True):
            first = int(key.rsplit("part-", 1)[1].removesuffix(".jsonl"))
            if first > step:
                self.store.delete(key)  # wholly after the resume point: those steps are redone
                continue
            rows = read_segment(self.store, key)
            kept = [r for r in rows if r["step"] <= step]
            if len(kept) < SEGMENT_ROWS:
                self.open, self.open_key = kept, key  # keep filling the newest segment
            if len(kept) != len(rows):
                self._write(key, kept)
            return

    def append(self, row: dict) -> None:
        if self.open_key is None or len(self.open) >= SEGMENT_ROWS:
            self.open, self.open_key = [], _segment_key(self.prefix, row["step"])
        self.open.append(row)

    def flush(self) -> None:
        if self.open_key is not None:
            self._write(self.open_key, self.open)

    def _write(self, key: str, rows: list[dict]) -> None:
        self.store.write(key, encode_rows(rows))


class MetricsLog:
    """Rank 0's metrics: JSONL segments (metrics and, optionally, sample ids) and TensorBoard."""

    def __init__(self, store: ObjectStore, keys: RunKeys, local_dir: Path, resume_step: int) -> None:
        self.store, self.keys = store, keys
        self.rows = SegmentLog(store, keys.metrics, resume_step)
        self.samples = SegmentLog(store, keys.samples, resume_step)
        self.resume_step = resume_step
        self.tb_dir = local_dir / "tensorboard"
        self.writer = None
        self._open_writer(resume_step)

    def _open_writer(self, step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            return
        self.writer = SummaryWriter(str(self.tb_dir), purge_step=step + 1, filename_suffix=f".step{step:08d}")

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def log_samples(self, step: int, ids: list[int]) -> None:
        self.samples.append({"step": step, "ids": ids})

    def flush(self) -> None:
        self.rows.flush()
        self.samples.flush()

    def close(self) -> None:
        """Close the TensorBoard writer (events not yet published go with the local folder)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def publish_tensorboard(self, step: int) -> None:
        """Close the current event file, upload it (once: it never changes again), open a new one."""
        if self.writer is None:
            return
        self.writer.close()
        for path in sorted(p for p in self.tb_dir.rglob("*") if p.is_file()):
            self.store.upload_file(f"{self.keys.tensorboard}/{path.relative_to(self.tb_dir).as_posix()}", path)
            path.unlink()
        self._open_writer(step)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_total: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the devices' combined peak."""
    return tokens_per_s * flops_per_token / peak_flops_total if peak_flops_total else 0.0


def node_peak_flops(device: torch.device, cache: Path) -> tuple[float, str]:
    """`sora.flops.peak_flops(device)`, measured once per node on CPU and then read from `cache`.

    On CPU the peak is a 0.5 s matmul loop; rank 0 ran it at every worker start, restarts included,
    while the other ranks waited in the first step's collective. It is kept per host, CPU count and
    torch thread count (what the measurement depends on). GPUs are looked up by name: no cache.
    """
    import json
    import os
    import socket

    import torch

    from sora.flops import peak_flops

    if device.type != "cpu":
        return peak_flops(device)
    path = cache / "peak-flops.json"
    key = f"{socket.gethostname()}/{os.cpu_count()} cpus/{torch.get_num_threads()} threads"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        value, label = known[key]
        return float(value), label
    value, label = peak_flops(device)
    known[key] = [value, label]
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(known))
    partial.replace(path)  # atomic: a concurrent reader sees the old or the new file
    return value, label
