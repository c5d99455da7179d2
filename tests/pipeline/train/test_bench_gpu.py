"""bench/gpu.py's CPU path: the GPU benchmark runs Sora's training step end to end and reports MFU
with activation checkpointing off and on (so the command is known to work before a GPU is lent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "gpu.py"


@pytest.mark.distributed
def test_gpu_bench_cpu_path_reports_mfu_with_checkpointing_off_and_on():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--cpu", "--cases", "tiny", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    records, summary = lines[:-1], lines[-1]
    assert [r["activation_checkpointing"] for r in records] == [0, 1]
    layers = 4  # the tiny preset's blocks
    assert [r["checkpointed_blocks"] for r in records] == [0, layers]
    for record in records:
        assert record["device"] == "cpu" and record["precision"] == "fp32"
        assert record["steps_measured"] >= 2 and record["tokens_per_s"] > 0
        assert 0 < record["mfu"] < 1
    assert set(summary["mfu"]) == {"tiny checkpointing=0", "tiny checkpointing=1"}
