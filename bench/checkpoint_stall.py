"""Checkpoint stall against a store with a fixed upload bandwidth: synchronous vs asynchronous
checkpoints (`train.async_checkpoint`), the same training job run twice in one run.

    python bench/checkpoint_stall.py [--steps 40] [--interval 10] [--bandwidth-mb 4] [--repeats 1]

Both jobs train the tiny model with ZeRO-3 on `--workers` CPU workers (Ray Train + DeepSpeed, gloo)
on the dataset bench/train.py builds, checkpoint every `--interval` steps, and upload through a
store held to `--bandwidth-mb` MB/s per worker (`SORA_UPLOAD_BANDWIDTH`, `throttle_uploads` in
pipeline/faults.py: an upload returns no sooner than size / bandwidth after it started, as over a
link of that speed). From the metrics rows of each job: the checkpoint stall as a share of step
time (`checkpoint_stall_s` over stall + data wait + compute), the stall and, asynchronously, the
background upload (`checkpoint_upload_s`) per checkpoint, and the median step time; then the ratio
of the stall shares. The final checkpoint is in neither share: both modes wait for its commit
before the run ends, and no row follows it. `--repeats` runs the pair again, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import build_dataset  # noqa: E402 - bench/train.py: the dataset of the training benches


def job(config, run: str, asynchronous: bool, args) -> dict:
    from pipeline.config.run import RunConfig
    from pipeline.keys import RunKeys
    from pipeline.pretrain.launch import pretrain
    from pipeline.storage import open_store
    from pipeline.train import checkpoint as ckpt
    from pipeline.train.metrics import read_rows

    raw = config.model_dump(mode="json")
    raw["train"] = {
        "run": run,
        "model": args.model,
        "workers": args.workers,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "max_steps": args.steps,
        "checkpoint_interval": args.interval,
        "eval_interval": args.steps,
        "log_interval": args.steps,
        "export": False,
        "async_checkpoint": asynchronous,
    }
    run_config = RunConfig.model_validate(raw)
    started = time.perf_counter()
    pretrain(run_config, quiet=True)
    wall = time.perf_counter() - started
    store, keys = open_store(run_config.storage.root), RunKeys(run)
    rows = read_rows(store, keys.metrics)
    stall = sum(r["checkpoint_stall_s"] for r in rows)
    steps = sum(r["data_wait_s"] + r["compute_s"] for r in rows)
    newest = ckpt.inventory(store, keys).sound[0]
    size = sum(f.size for f in ckpt.read_committed(store, keys, newest).files)
    saves = [r["step"] for r in rows if r["step"] % args.interval == 0 and r["step"] < args.steps]
    uploads = [r["checkpoint_upload_s"] for r in rows if r.get("checkpoint_upload_s") is not None]
    return {
        "stall_share": stall / (stall + steps),
        "stall_s_per_checkpoint": stall / len(saves),
        "upload_s_per_checkpoint": statistics.mean(uploads) if uploads else None,
        "step_s_median": statistics.median(r["data_wait_s"] + r["compute_s"] for r in rows),
        "checkpoints_in_rows": len(saves),
        "checkpoint_bytes": size,
        "wall_s_including_startup": wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--interval", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--bandwidth-mb", type=float, default=4.0, help="each worker's upload bandwidth, MB/s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="tiny", help="model preset (bench/gpu.py runs small on a GPU)")
    args = parser.parse_args(argv)
    # Read by the driver (pipeline/train/launch.py) and handed to every worker in its spec.
    os.environ["SORA_UPLOAD_BANDWIDTH"] = str(args.bandwidth_mb * 1e6)
    runs: dict[str, list[dict]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        config, manifest = build_dataset(f"file://{tmp}/store")
        for repeat in range(args.repeats):
            order = ("sync", "async") if repeat % 2 == 0 else ("async", "sync")
            for mode in order:
                runs[mode].append(job(config, f"stall-{mode}-{repeat}", mode == "async", args))
    sync = statistics.mean(r["stall_share"] for r in runs["sync"])
    asynchronous = statistics.mean(r["stall_share"] for r in runs["async"])
    result = {
        "bench": "checkpoint-stall",
        "model": args.model,
        "seq_len": manifest.seq_len,
        "workers": args.workers,
        "steps": args.steps,
        "checkpoint_interval": args.interval,
        "upload_bandwidth_mb_s_per_worker": args.bandwidth_mb,
        "sync": runs["sync"],
        "async": runs["async"],
        "stall_share_sync": sync,
        "stall_share_async": asynchronous,
        "ratio_async_vs_sync": asynchronous / sync if sync else None,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
