"""The training loop that runs on every Ray Train worker, as named steps.

    trainer = Trainer(spec, rank, local_rank, world, device)   # built and resumed: ready to step
    while trainer.step < trainer.stop_at:
        row = trainer.train_step()      # first takes a finished background upload (or its error)
        trainer.maybe_evaluate(row); trainer.maybe_checkpoint()
    trainer.export()

Construction builds the DeepSpeed engine and loaders, then resumes: the `CheckpointManager`
(checkpoint_manager.py) finds the newest sound checkpoint (rank 0 decides, every rank downloads
only what it needs; another data-parallel layout is converted to DeepSpeed's universal format)
and restores the engine and the stateful parts (progress, loader position, RNG, early stopping).
It is the same whether Ray restarted the workers after a failure or a user re-launched the run.

Checkpoints are uploaded in the background by default (`train.async_checkpoint`): the loop is
blocked only by the local save and, when the previous upload is not done by the next save, the wait
for it; the end of the run (also `stop_after_steps`, early stopping) waits for the commit. The rows
carry both: `checkpoint_stall_s` (the loop blocked) and `checkpoint_upload_s` (the upload and
commit in the background, in the first row after it finished).
"""

from __future__ import annotations

import glob
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sora import SoraConfig, flops_per_token

from ..errors import UserError
from ..faults import kill_in_upload, kill_once, pace, throttle_uploads
from ..records import ExportInfo
from ..storage import open_store
from . import checkpoint as ckpt
from .checkpoint_manager import CheckpointManager, ResumePoint, prepare_resume, share
from .ds_config import deepspeed_config
from .engine import Engine
from .export import export_plan
from .export_formats import RunExports
from .loader import TrainLoader, cache_directory, validation_batches
from .metrics import MetricsLog, mfu, node_peak_flops
from .spec import WorkerSpec
from .state import EarlyStopping, Progress, RngState

log = logging.getLogger(__name__)

# How long `Trainer.close` gives an abandoned upload to stop (at its next file) before it removes the
# local folder; a thread still reading it then (a large file, a hung store) leaves the folder to the
# next attempt on this node, which empties it first.
_UPLOAD_STOP_WAIT_S = 10.0


def local_directory(run: str, local_rank: int) -> Path:
    """This worker's local scratch (its checkpoint copy before upload, the export's shards, rank 0's
    TensorBoard files): one fixed folder per run and local rank (unique on a node) in the node
    cache, emptied here. A killed attempt's copy (~1.5 GB per rank at 7B) is never uploaded, so
    never deleted by the upload; a fixed folder bounds it to one per rank, reclaimed by the next
    attempt on the node, where a new folder per attempt piled one up with every retry."""
    path = cache_directory() / "scratch" / run / f"local-rank{local_rank}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    if local_rank == 0:  # earlier versions' per-attempt folders: `sora-<run>-rank<N>-<mkdtemp suffix>`
        stale = re.compile(rf"sora-{re.escape(run)}-rank\d+-[a-z0-9_]{{8}}")
        for old in Path(tempfile.gettempdir()).glob(f"sora-{glob.escape(run)}-rank*"):
            if stale.fullmatch(old.name) and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """bf16 where the worker's own device supports it (decided on the workers, agreed by all)."""
    if precision != "auto":
        return precision == "bf16"
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    flag = torch.tensor([1 if supported else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # mixed nodes: fall back to what every rank can do
    return bool(flag.item())


class Trainer:
    """One worker's share of the run, complete once constructed (built, resumed, metrics ready)."""

    def __init__(
        self,
        spec: WorkerSpec,
        rank: int,
        local_rank: int,
        world: int,
        device: torch.device,
        wait_for_peers: Callable[[], None] | None = None,
    ) -> None:
        self.spec, self.rank, self.local_rank, self.world = spec, rank, local_rank, world
        self.wait_for_peers = wait_for_peers
        self.config = spec.run_config
        self.train = self.config.train
        self.keys, self.manifest = spec.keys, spec.manifest
        self.model_config = SoraConfig(**spec.model_config)
        self.store = throttle_uploads(open_store(self.config.storage.root, self.config.storage.settings()),
                                      spec.upload_bandwidth)  # fmt: skip
        self.local = local_directory(self.train.run, local_rank)
        self.node_dir = cache_directory() / "checkpoints" / self.train.run
        self.objective = spec.objective
        self.objective.bind(self.store, self.node_dir)
        self.tokens_per_sample = self.objective.tokens_per_sample(self.manifest)
        self.progress, self.early = Progress(), EarlyStopping(self.objective.patience)
        self.stop_at = min(self.train.max_steps, self.train.stop_after_steps or self.train.max_steps)
        self.last_val: float | None = None
        self.stall = 0.0
        point, universal = self._build(device)
        self.checkpoints = self._checkpoint_manager()
        self.resume_bytes = self.checkpoints.restore(point, universal, local_rank, self.dp_rank) if point else None
        if self.resume_bytes:
            self.resume_bytes[0] += self.converted_bytes  # rank 0's download for the conversion
        if self.early.stopped:  # stopped early before the restart: straight to the export
            self.stop_at = self.step
        self.data_exhausted = self._data_limit()
        # The shards of the next step, before the first collective of the loop: a node with an empty
        # cache downloads them while the others wait in Ray Train's barrier (no collective timeout).
        self.loader.seek_current()
        self._wait_for_peers()
        self.metrics = MetricsLog(self.store, self.keys, self.local, self.step) if rank == 0 else None
        self.flops_per_token = flops_per_token(self.model_config, self.tokens_per_sample)
        peak, self.peak_label = node_peak_flops(device, cache_directory()) if rank == 0 else (0.0, "")
        self.peak_total = peak * world

    @property
    def step(self) -> int:
        return self.progress.step

    # -- build -------------------------------------------------------------------------------------
    def _build(self, device: torch.device) -> tuple[ResumePoint | None, bool]:
        """Device, precision, DeepSpeed engine, loaders; returns where to resume from and whether
        that checkpoint needs the universal format (written with another layout)."""
        import deepspeed

        # Data first, before this rank enters any torch collective: the training stream reads only the
        # shard index here (shards stream in later, see `seek_current`), the validation set is read
        # now; a replacement node downloads while the others wait in Ray Train's barrier
        # (`wait_for_peers`), never inside a collective whose timeout a download could exceed.
        seed = self.train.seed
        samples = self.objective.train_samples(self.store, self.manifest, seed)
        val = self.objective.validation_samples(self.store, self.manifest, seed)
        self._wait_for_peers()
        self.device = device
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        self.bf16 = resolve_bf16(self.train.precision, device)  # a quick collective: every rank is here
        # The batch cut for the workers Ray Train started (elastic: any count in [min, max]).
        self.split = self.train.split(self.world)
        layout = (self.split.data_parallel, self.train.pipeline_stages)
        # Rank 0 finds the checkpoint and, for another layout, converts it (at 7B: ~100 GB down,
        # ~84 GB up) while the others wait in the barrier again, not in a collective.
        found, self.converted_bytes = (None, 0)
        if self.rank == 0:
            found, self.converted_bytes = prepare_resume(
                self.store, self.keys, self.spec.restart, self.spec.init_from, self.compatibility, layout,
                self.node_dir, self.spec.lease,
            )  # fmt: skip
        self._wait_for_peers()
        point = share(found)
        universal = point is not None and point.layout != layout
        ds_config = deepspeed_config(self.train, self.bf16, load_universal=universal, split=self.split)
        self.engine = Engine(self.train, self.model_config, ds_config, device, self.objective)
        # Parameters this rank holds after construction: ~total/world under ZeRO-3 (partitioned
        # while built), the whole model otherwise. Logged once, for the memory contract.
        held = [None] * self.world
        dist.all_gather_object(held, self.engine.local_parameter_count())
        self.held_parameters = held
        self.dp_rank = self.engine.engine.grid.data_parallel_id if self.engine.pipeline else self.rank
        batch, micro, dp = self.train.global_batch, self.split.micro_batch, self.split.data_parallel
        self.loader = TrainLoader(samples, batch, micro, self.dp_rank, dp)
        evals = self.train.eval_batches
        self.val_batches = validation_batches(val, evals, batch, micro, self.dp_rank, dp) if val is not None else []
        if hasattr(val, "close"):
            val.close()  # the batches are copies: release the validation shards
        return point, universal

    def _data_limit(self) -> str | None:
        """With on_exhausted: stop, end the run at the last step before a dataset would repeat."""
        stop = self.loader.stream.stop_position()
        if stop is None:
            return None
        last = stop // self.train.global_batch
        if last == 0:
            batch = self.train.global_batch
            raise UserError(f"{self.loader.stream.describe_exhausted()}, before one global batch of {batch}")
        if last >= self.stop_at:
            return None
        self.stop_at = last
        return f"{self.loader.stream.describe_exhausted()}: the run stops at step {last}"

    def _wait_for_peers(self) -> None:
        """Ray Train's barrier: no timeout, unlike the torch collectives (train.collective_timeout_s)."""
        if self.wait_for_peers is not None:
            self.wait_for_peers()

    @property
    def compatibility(self) -> dict:
        return ckpt.compatibility_fields(self.train, self.spec.model_config, self.bf16)

    def _checkpoint_manager(self) -> CheckpointManager:
        states = {"progress": self.progress, "loader": self.loader, "rng": RngState(), "early_stopping": self.early}
        fixed = {
            "dp_size": self.split.data_parallel,
            "pp": self.train.pipeline_stages,
            "world_size": self.world,
            "dataset": self.manifest.dataset,
            "dataset_version": self.manifest.version,
            "compatibility": self.compatibility,
            "config": self.spec.config,
        }
        dirs, keep = (self.local, self.node_dir), self.train.keep_last
        return CheckpointManager(
            self.store, self.keys, self.spec.lease, self.engine, states, fixed, dirs, keep,
            wait_for_peers=self.wait_for_peers, asynchronous=self.train.async_checkpoint,
            timeout_s=self.train.collective_timeout_s,
            upload_fault=self._upload_fault if self.spec.kill_worker else None,
        )  # fmt: skip

    def _upload_fault(self, step: int) -> None:
        """Tests: `SORA_KILL_WORKER=RANK:STEP:upload` kills rank RANK in its upload thread (faults.py)."""
        kill_in_upload(self.spec.kill_worker, self.rank, step, self.spec.fault_dir or tempfile.gettempdir())

    # -- step --------------------------------------------------------------------------------------
    def train_step(self) -> dict | None:
        """One optimizer step on every rank; rank 0 returns the step's metrics row."""
        self.checkpoints.poll()  # a background upload that failed is raised here, at a step boundary
        started = time.perf_counter()
        micro, ids = self.loader.next_step()
        fetched = time.perf_counter()
        loss = self.engine.train_step(micro)
        self.progress.advance(self.train.global_batch * self.tokens_per_sample)
        kill_once(self.spec.kill_worker, self.rank, self.step, self.spec.fault_dir or tempfile.gettempdir())
        pace(self.spec.pace_file)
        finished = time.perf_counter()
        if self.train.record_sample_ids:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, (self.dp_rank, ids.tolist()))
            if self.rank == 0:
                by_dp = dict(sorted(gathered))
                self.metrics.log_samples(self.step, [i for d in sorted(by_dp) for i in by_dp[d]])
        return self._row(loss, started, fetched, finished) if self.rank == 0 else None

    def _row(self, loss: float, started: float, fetched: float, finished: float) -> dict:
        tokens_per_s = self.train.global_batch * self.tokens_per_sample / (finished - started)
        row = {
            "step": self.step,
            "time": time.time(),
            "workers": self.world,  # elastic runs change it between attempts
            "loss": loss,
            "lr": self.engine.lr,
            "grad_norm": self.engine.grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s, self.flops_per_token, self.peak_total),
            "data_wait_s": fetched - started,
            "compute_s": finished - fetched,
            "checkpoint_stall_s": self.stall,
            "tokens": self.progress.tokens,
            "peak": self.peak_label,
        }
        datasets = self.loader.stream.progress(self.loader.consumed).get("datasets")
        if datasets:  # samples drawn and epochs begun per dataset of the mixture (a pure function of the step)
            row["tokens_by_dataset"] = {name: d["samples"] * self.tokens_per_sample for name, d in datasets.items()}
            row["epochs_by_dataset"] = {name: d["epoch"] for name, d in datasets.items()}
        if self.data_exhausted and self.step == self.stop_at:
            row["data_exhausted"] = self.data_exhausted
        uploaded = self.checkpoints.take_upload_seconds()
        if uploaded is not None:  # a background upload (and commit) finished since the last row
            row["checkpoint_upload_s"] = uploaded
        if self.held_parameters is not None:
            row["parameters_per_rank"] = self.held_parameters
            self.held_parameters = None
        if self.resume_bytes is not None:
            row["resume_download_bytes"] = self.resume_bytes  # per rank, first step after a resume
            self.resume_bytes = None
            if self.checkpoints.skipped:  # newer checkpoints that failed verification, with reasons
                row["resume_skipped"] = self.checkpoints.skipped
        self.stall = 0.0
        return row

    # -- evaluate ----------------------------------------------------------------------------------
    def maybe_evaluate(self, row: dict | None) -> None:
        """Every rank decides identically (same step, same number of batches everywhere)."""
        if self.val_batches and (self.step % self.train.eval_interval == 0 or self.step == self.stop_at):
            result = self.engine.evaluate(self.val_batches)
            self.last_val = result["loss"]
            if row is not None:
                row.update(val_loss=self.last_val, val_ppl=float(np.exp(min(self.last_val, 50))))
                if "accuracy" in result:
                    row["val_accuracy"] = result["accuracy"]
            # Early stopping: checkpoint and export where the validation loss stopped improving.
            if self.early.update(self.last_val, can_stop=self.step < self.stop_at):
                self.stop_at = self.step
                if row is not None:
                    row["early_stopped"] = True
        if self.rank == 0:
            self.metrics.log(row)

    # -- checkpoint --------------------------------------------------------------------------------
    def maybe_checkpoint(self) -> int | None:
        """Save at the interval and at the end of the run; returns what `checkpoint_now` does."""
        if self.step % self.train.checkpoint_interval and self.step != self.stop_at:
            if self.rank == 0 and self.step % self.train.log_interval == 0:
                self.metrics.flush()
            return None
        return self.checkpoint_now()

    def checkpoint_now(self, durable: bool = False) -> int | None:
        """Save the current step (interval, end, or a drain) unless it was saved already, publishing
        the metrics with it. `durable` (a drain) and the end of the run wait for the commit, the
        interval's saves only for the previous one (asynchronous checkpoints). Every rank; returns the
        step of the newest checkpoint known committed on every rank by now (to report), or None."""
        started = time.perf_counter()
        durable = durable or self.step == self.stop_at
        if self.checkpoints.saved == self.step:  # a drain right after the interval's save
            committed = self.checkpoints.wait() if durable else None
        else:
            committed = self.checkpoints.save(self.step, publish=self._publish_metrics, wait=durable)
        self.stall += time.perf_counter() - started
        return committed

    def close(self) -> None:
        """Stop the prefetch and release the held shards (the node cache may evict them); an upload
        still running after a failure commits nothing; the local folder goes once nothing reads it."""
        stopped = self.checkpoints.close(_UPLOAD_STOP_WAIT_S)
        self.loader.stream.close()
        if self.metrics is not None:
            self.metrics.close()
        if stopped:
            shutil.rmtree(self.local, ignore_errors=True)
        else:
            log.warning("rank %d: an upload is still reading %s; the next attempt on this node removes it",
                        self.rank, self.local)  # fmt: skip

    def _publish_metrics(self) -> None:
        self.metrics.flush()
        self.metrics.publish_tensorboard(self.step)

    # -- export ------------------------------------------------------------------------------------
    def export(self) -> None:
        """The finished run's HF export (the objective's model and lineage), streamed to the store by
        rank 0 one tensor at a time (export.py): every rank takes part in gathering the weights."""
        self.checkpoints.wait()  # none in flight after the end's save; never export before a commit
        finished = self.step >= self.train.max_steps or self.early.stopped or self.data_exhausted
        if self.train.export and finished:
            skeleton = self.objective.export_skeleton(self.model_config)
            plan = export_plan(skeleton)  # every rank: which tensors, in which order
            export = (
                RunExports(self.store, self.train.run, skeleton, plan, self.local / "export", self.train.export_format)
                if self.rank == 0
                else None
            )  # the Sora export, plus the Llama one by train.export_format (export_formats.py)
            self.engine.export_weights(plan, export.write if export else None)
            if export is not None:
                export.finish(self.manifest, self.objective.export_info(self.export_info()))
        if self.rank == 0:
            self._publish_metrics()
        # Ray Train's barrier, no timeout: in a pipeline export the other ranks are done long before
        # rank 0 has received and uploaded the model (~28 GB at 7B), which can outlast the torch
        # collective timeout (train.collective_timeout_s). A torch barrier only without Ray (tests).
        if self.wait_for_peers is not None:
            self.wait_for_peers()
        else:
            dist.barrier()

    def export_info(self) -> ExportInfo:
        """What every export records: step, validation loss, dataset version, warm-start lineage."""
        info = ExportInfo(
            step=self.step,
            val_loss=self.last_val,
            dataset=self.manifest.dataset,
            dataset_version=self.manifest.version,
            run=self.train.run,
            early_stopped=self.early.stopped,
            data_exhausted=bool(self.data_exhausted),
            tokenizer_sha256=self.manifest.tokenizer.sha256,
        )
        lineage = self.spec.init_from
        if lineage:  # warm start: the same object as run.json's `init_from`
            info = info.model_copy(update={"warm_start": lineage, "init_from": lineage.checkpoint})
        return info
