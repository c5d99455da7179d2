"""Training metrics: per-step JSONL in the run folder, TensorBoard, and MFU.

Rank 0 keeps the rows; `flush` rewrites `runs/<run>/metrics.jsonl` (and `samples.jsonl`, the audit
of sample ids per step, when enabled). On resume, rows after the resumed step are dropped, so the
files always describe the run as it actually progressed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..storage import ObjectStore


class MetricsLog:
    def __init__(self, store: ObjectStore, run: str, local_dir: Path, resume_step: int) -> None:
        self.store, self.run = store, run
        self.rows = [r for r in self._load("metrics.jsonl") if r["step"] <= resume_step]
        self.samples = [r for r in self._load("samples.jsonl") if r["step"] <= resume_step]
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = local_dir / "tensorboard"
            self.writer = SummaryWriter(str(self.tb_dir), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is optional at run time
            self.tb_dir = None

    def _load(self, name: str) -> list[dict]:
        try:
            text = self.store.read(f"runs/{self.run}/{name}").decode()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def log_samples(self, step: int, ids: list[int]) -> None:
        self.samples.append({"step": step, "ids": ids})

    def flush(self) -> None:
        body = "".join(json.dumps(r) + "\n" for r in self.rows).encode()
        self.store.write(f"runs/{self.run}/metrics.jsonl", body)
        if self.samples:
            self.store.write(
                f"runs/{self.run}/samples.jsonl", "".join(json.dumps(r) + "\n" for r in self.samples).encode()
            )
        if self.writer is not None:
            self.writer.flush()
            for path in sorted(p for p in self.tb_dir.rglob("*") if p.is_file()):
                self.store.write(
                    f"runs/{self.run}/tensorboard/{path.relative_to(self.tb_dir).as_posix()}", path.read_bytes()
                )


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops_total: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the devices' combined peak."""
    return tokens_per_s * flops_per_token / peak_flops_total if peak_flops_total else 0.0
