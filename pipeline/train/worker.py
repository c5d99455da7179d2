"""The training loop that runs on every Ray Train worker.

Resume discovery is the same whether Ray restarted the workers after a failure or a user
re-launched the run: rank 0 finds the newest checkpoint of this run whose `COMMITTED` file
verifies, every rank downloads it, and training continues at exactly the next sample. A
checkpoint written by a different data-parallel layout is first converted to DeepSpeed's
universal format.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sora import SoraConfig, flops_per_token
from sora.flops import peak_flops

from ..config.run import RunConfig
from ..faults import kill_once
from ..storage import open_store
from . import checkpoint as ckpt
from .ds_config import deepspeed_config
from .engine import Engine
from .export import export_hf
from .loader import BlockStore, GlobalOrder, TrainLoader, validation_batches
from .metrics import MetricsLog, mfu


def _broadcast(value, src: int = 0):
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _to_universal(local: Path, tag: str) -> str:
    """Convert a downloaded checkpoint to DeepSpeed's universal format; returns the new tag."""
    target = local / f"{tag}-universal"
    if not target.exists():
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "deepspeed.checkpoint.ds_to_universal",
                "--input_folder",
                str(local / tag),
                "--output_folder",
                str(target),
                "--num_extract_workers",
                "1",
                "--num_merge_workers",
                "1",
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"converting checkpoint {tag} to universal format failed:\n{done.stderr[-2000:]}")
    return target.name


def _rng_state() -> dict:
    """RNG states of rank 0 (training itself draws no random numbers: no dropout; kept for audit
    and for restoring any future stochastic component)."""
    return {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy_seed": int(np.random.get_state()[1][0]),
        "python": random.getstate()[1][0],
    }


def _restore_rng(state: dict) -> None:
    rng = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(rng))


def train_worker(payload: dict) -> None:
    import ray.train

    config = RunConfig.model_validate(payload["config"])
    train, manifest = config.train, payload["manifest"]
    model_config = SoraConfig(**payload["model_config"])
    rank, world = dist.get_rank(), dist.get_world_size()
    device = ray.train.torch.get_device() if payload["use_gpu"] else torch.device("cpu")
    store = open_store(config.storage.root, config.storage.settings())
    local = Path(tempfile.mkdtemp(prefix=f"sora-{train.run}-rank{rank}-"))

    # Resume: rank 0 picks the newest verifiable checkpoint; every rank downloads it.
    found = ckpt.newest_loadable(store, train.run, local) if rank == 0 else None
    found = _broadcast(found)
    step, state = found if found else (0, None)
    if found and rank != 0:
        ckpt.download_verified(store, train.run, step, local)
    universal = bool(state) and (state["dp_size"], state["pp"]) != (train.data_parallel, train.pipeline_stages)

    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if payload["use_gpu"] else "gloo")
    bf16 = payload["bf16"]
    engine = Engine(train, model_config, deepspeed_config(train, bf16, load_universal=universal), device)
    dp_rank = engine.engine.grid.data_parallel_id if engine.pipeline else rank
    blocks = BlockStore(store, manifest["shards"]["train"])
    val_blocks = BlockStore(store, manifest["shards"]["val"]) if manifest["shards"]["val"] else None
    loader = TrainLoader(
        blocks,
        GlobalOrder(len(blocks), train.seed),
        train.global_batch,
        train.micro_batch,
        dp_rank,
        train.data_parallel,
    )
    val_batches = (
        validation_batches(
            val_blocks, train.eval_batches, train.global_batch, train.micro_batch, dp_rank, train.data_parallel
        )
        if val_blocks
        else []
    )
    if state:
        tag = _to_universal(local, ckpt.tag_for(step)) if universal else ckpt.tag_for(step)
        engine.load(str(local), tag)
        loader.load_state_dict(state["loader"])
        _restore_rng(state["rng"])

    metrics = MetricsLog(store, train.run, local, step) if rank == 0 else None
    seq_len = manifest["seq_len"]
    flops = flops_per_token(model_config, seq_len)
    peak, peak_label = peak_flops(device) if rank == 0 else (0.0, "")
    peak_total = peak * world
    stop_at = min(train.max_steps, train.stop_after_steps or train.max_steps)
    stall = 0.0
    last_val = None
    while step < stop_at:
        started = time.perf_counter()
        micro, ids = loader.next_step()
        fetched = time.perf_counter()
        loss = engine.train_step(micro)
        step += 1
        kill_once(payload.get("kill_worker"), rank, step, payload.get("fault_dir", tempfile.gettempdir()))
        finished = time.perf_counter()
        if train.record_sample_ids:
            gathered = [None] * world
            dist.all_gather_object(gathered, (dp_rank, ids.tolist()))
            if rank == 0:
                by_dp = dict(sorted(gathered))
                metrics.log_samples(step, [i for d in sorted(by_dp) for i in by_dp[d]])
        row = None
        if rank == 0:
            tokens_per_s = train.global_batch * seq_len / (finished - started)
            row = {
                "step": step,
                "time": time.time(),
                "loss": loss,
                "lr": engine.lr,
                "grad_norm": engine.grad_norm,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu(tokens_per_s, flops, peak_total),
                "data_wait_s": fetched - started,
                "compute_s": finished - fetched,
                "checkpoint_stall_s": stall,
                "tokens": loader.consumed * seq_len,
                "peak": peak_label,
            }
        stall = 0.0
        if val_batches and (step % train.eval_interval == 0 or step == stop_at):
            last_val = engine.eval_loss(val_batches)
            if row is not None:
                row.update(val_loss=last_val, val_ppl=float(np.exp(min(last_val, 50))))
        if rank == 0:
            metrics.log(row)
        if step % train.checkpoint_interval == 0 or step == stop_at:
            t0 = time.perf_counter()
            _save(engine, store, train, step, loader, local, rank, world, payload, metrics)
            stall = time.perf_counter() - t0
            report = {"step": step, "loss": loss}
            with tempfile.TemporaryDirectory() as pointer_dir:
                Path(pointer_dir, "pointer.json").write_text(json.dumps({"step": step, "run": train.run}))
                checkpoint = ray.train.Checkpoint.from_directory(pointer_dir) if rank == 0 else None
                ray.train.report(report, checkpoint=checkpoint)
        elif rank == 0 and step % train.log_interval == 0:
            metrics.flush()

    if train.export and step >= train.max_steps:
        state_dict = engine.full_state_dict()
        if rank == 0:
            info = {
                "step": step,
                "val_loss": last_val,
                "dataset": manifest["dataset"],
                "dataset_version": manifest["version"],
                "run": train.run,
            }
            export_hf(store, store, train.run, model_config, state_dict, manifest, info)
    if rank == 0:
        metrics.flush()
    dist.barrier()


def _save(engine, store, train, step, loader, local, rank, world, payload, metrics) -> None:
    """All ranks save + upload their files; rank 0 commits once every rank is done."""
    tag = ckpt.tag_for(step)
    rank_dir = local / f"save-rank{rank}"
    engine.save(str(rank_dir), tag)
    files = ckpt.upload_directory(store, rank_dir / tag, f"{ckpt.checkpoints_prefix(train.run)}/{tag}")
    everyone = [None] * world
    dist.all_gather_object(everyone, files)
    if rank == 0:
        merged = {f["name"]: f for part in everyone for f in part}
        state = {
            "step": step,
            "loader": loader.state_dict(),
            "dp_size": train.data_parallel,
            "pp": train.pipeline_stages,
            "world_size": world,
            "rng": _rng_state(),
            "tokens": loader.consumed * payload["manifest"]["seq_len"],
            "dataset": payload["manifest"]["dataset"],
            "dataset_version": payload["manifest"]["version"],
            "config": payload["config"],
        }
        ckpt.commit(store, train.run, step, sorted(merged.values(), key=lambda f: f["name"]), state)
        ckpt.garbage_collect(store, train.run, train.keep_last)
        metrics.flush()
    dist.barrier()
    for path in sorted(rank_dir.rglob("*"), reverse=True):  # local copy no longer needed
        path.unlink() if path.is_file() else path.rmdir()
