"""The training loop that runs on every Ray Train worker, as named steps.

    trainer = Trainer(spec, rank, local_rank, world)
    trainer.build()        # device, precision, DeepSpeed engine, loaders
    trainer.resume()       # newest sound checkpoint: per-rank download, compatibility check
    while trainer.step < trainer.stop_at:
        trainer.train_step()
        trainer.maybe_evaluate(); trainer.maybe_checkpoint()
    trainer.export()

Resume discovery is the same whether Ray restarted the workers after a failure or a user
re-launched the run: rank 0 picks the newest committed checkpoint whose listing is sound and
broadcasts the choice; each rank downloads only what it needs. A checkpoint written with another
data-parallel layout is converted to DeepSpeed's universal format, once per node.
"""

from __future__ import annotations

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

from ..faults import kill_once
from ..keys import RunKeys
from ..storage import open_store
from . import checkpoint as ckpt
from . import warm_start
from .ds_config import deepspeed_config
from .engine import Engine
from .loader import GlobalOrder, TrainLoader, cache_directory, validation_batches
from .metrics import MetricsLog, mfu
from .spec import WorkerSpec


def broadcast(value, src: int = 0):
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """bf16 where the worker's own device supports it (decided on the workers, agreed by all)."""
    if precision != "auto":
        return precision == "bf16"
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    flag = torch.tensor([1 if supported else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # mixed nodes: fall back to what every rank can do
    return bool(flag.item())


class Trainer:
    def __init__(self, spec: WorkerSpec, rank: int, local_rank: int, world: int) -> None:
        self.spec, self.rank, self.local_rank, self.world = spec, rank, local_rank, world
        self.config = spec.run_config
        self.train = self.config.train
        self.keys = spec.keys
        self.manifest = spec.dataset
        self.model_config = SoraConfig(**spec.model_config)
        self.store = open_store(self.config.storage.root, self.config.storage.settings())
        self.local = Path(tempfile.mkdtemp(prefix=f"sora-{self.train.run}-rank{rank}-"))
        self.node_dir = cache_directory() / "checkpoints" / self.train.run
        self.step = 0
        self.stop_at = min(self.train.max_steps, self.train.stop_after_steps or self.train.max_steps)
        self.last_val: float | None = None
        self.stall = 0.0
        self.resume_bytes: list[int] | None = None
        self.objective = spec.objective(self.store, self.node_dir)
        # Early stopping (objectives with a patience): identical on every rank, because the
        # validation loss it compares is all-reduced.
        self.best_val: float | None = None
        self.evals_since_best = 0
        self.stopped_early = False

    # -- build -------------------------------------------------------------------------------------
    def build(self, device: torch.device) -> None:
        import deepspeed

        self.device = device
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        self.bf16 = resolve_bf16(self.train.precision, device)
        found = broadcast(self._find_resume() if self.rank == 0 else None)
        if isinstance(found, ckpt.ResumeError):
            raise found  # on every rank, so none waits in a collective for the others
        self.found = found
        saved_layout = self.found["layout"] if self.found else None
        self.universal = saved_layout is not None and saved_layout != (
            self.train.data_parallel,
            self.train.pipeline_stages,
        )
        ds_config = deepspeed_config(self.train, self.bf16, load_universal=self.universal)
        self.engine = Engine(self.train, self.model_config, ds_config, device, self.objective)
        # Parameters this rank holds after construction: ~total/world under ZeRO-3 (partitioned
        # while built), the whole model otherwise. Logged once, for the memory contract.
        held = [None] * self.world
        dist.all_gather_object(held, self.engine.local_parameter_count())
        self.held_parameters = held
        self.dp_rank = self.engine.engine.grid.data_parallel_id if self.engine.pipeline else self.rank
        samples = self.objective.samples(self.store, self.manifest, "train")
        self.loader = TrainLoader(
            samples,
            GlobalOrder(len(samples), self.train.seed),
            self.train.global_batch,
            self.train.micro_batch,
            self.dp_rank,
            self.train.data_parallel,
        )
        val = self.objective.samples(self.store, self.manifest, "validation")
        self.val_batches = (
            validation_batches(
                val,
                self.train.eval_batches,
                self.train.global_batch,
                self.train.micro_batch,
                self.dp_rank,
                self.train.data_parallel,
            )
            if val is not None
            else []
        )

    def _find_resume(self) -> dict | ckpt.ResumeError | None:
        """Rank 0: the checkpoint to resume from (this run's own, else the warm-start parent's,
        see `warm_start.py`) and the settings it was written with."""
        try:
            step, _ = ckpt.find_resume(self.store, self.keys, restart=self.spec.restart)
            if step is not None:
                state = ckpt.read_state(self.store, self.keys, step)
                ckpt.check_compatible(state.get("compatibility", {}), self.compatibility)
                return {"step": step, "run": self.keys.run, "warm": False, "layout": (state["dp_size"], state["pp"])}
            if self.spec.init_from is None:
                return None
            parent = self.spec.init_from
            state = warm_start.parent_state(self.store, parent)
            warm_start.check_parent(state.get("compatibility", {}), self.compatibility, parent["run"])
        except ckpt.ResumeError as error:
            return error
        return {"step": parent["step"], "run": parent["run"], "warm": True, "layout": (state["dp_size"], state["pp"])}

    @property
    def compatibility(self) -> dict:
        return ckpt.compatibility_fields(self.train, self.spec.model_config, self.bf16)

    # -- resume ------------------------------------------------------------------------------------
    def resume(self) -> None:
        if not self.found:
            self.metrics = MetricsLog(self.store, self.keys, self.local, 0) if self.rank == 0 else None
            return
        step, source, warm = self.found["step"], RunKeys(self.found["run"]), self.found["warm"]
        tag = ckpt.tag_for(step)
        downloaded = ckpt.download_for_rank(
            self.store, source, step, self.node_dir, self.dp_rank, everything=self.universal
        )
        if self.universal:
            with ckpt.node_lock(self.node_dir / f"{tag}.convert.lock"):
                tag = _to_universal(self.node_dir, tag)
        self.engine.load(str(self.node_dir), tag, warm_start=warm)
        if not warm:  # a warm start takes weights + optimizer moments only (see warm_start.py)
            self._restore_progress(ckpt.read_state(self.store, source, step))
        sizes = [None] * self.world
        dist.all_gather_object(sizes, downloaded)
        self.resume_bytes = sizes
        dist.barrier()  # every rank of the node has loaded: the node copy can go
        if self.local_rank == 0:
            ckpt.remove_node_copy(self.node_dir)
        self.metrics = MetricsLog(self.store, self.keys, self.local, self.step) if self.rank == 0 else None

    def _restore_progress(self, state: dict) -> None:
        """Where a resumed run stands: step, data order position, RNG, early stopping."""
        self.loader.load_state_dict(state["loader"])
        ckpt.restore_rng(state["rng"])
        self.step = state["step"]
        early = state.get("early_stopping") or {}
        self.best_val, self.evals_since_best = early.get("best_val"), early.get("evals_since_best", 0)
        if early.get("stopped"):
            self.stopped_early, self.stop_at = True, self.step

    # -- step --------------------------------------------------------------------------------------
    def train_step(self) -> dict | None:
        started = time.perf_counter()
        micro, ids = self.loader.next_step()
        fetched = time.perf_counter()
        loss = self.engine.train_step(micro)
        self.step += 1
        kill_once(self.spec.kill_worker, self.rank, self.step, self.spec.fault_dir or tempfile.gettempdir())
        finished = time.perf_counter()
        if self.train.record_sample_ids:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, (self.dp_rank, ids.tolist()))
            if self.rank == 0:
                by_dp = dict(sorted(gathered))
                self.metrics.log_samples(self.step, [i for d in sorted(by_dp) for i in by_dp[d]])
        if self.rank != 0:
            return None
        seq_len = self.objective.tokens_per_sample(self.manifest)
        tokens_per_s = self.train.global_batch * seq_len / (finished - started)
        row = {
            "step": self.step,
            "time": time.time(),
            "loss": loss,
            "lr": self.engine.lr,
            "grad_norm": self.engine.grad_norm,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s, self.flops_per_token, self.peak_total),
            "data_wait_s": fetched - started,
            "compute_s": finished - fetched,
            "checkpoint_stall_s": self.stall,
            "tokens": self.loader.consumed * seq_len,
            "peak": self.peak_label,
        }
        if self.held_parameters is not None:
            row["parameters_per_rank"] = self.held_parameters
            self.held_parameters = None
        if self.resume_bytes is not None:
            row["resume_download_bytes"] = self.resume_bytes  # per rank, first step after a resume
            self.resume_bytes = None
        self.stall = 0.0
        return row

    def prepare_metrics(self) -> None:
        self.flops_per_token = flops_per_token(self.model_config, self.objective.tokens_per_sample(self.manifest))
        peak, self.peak_label = peak_flops(self.device) if self.rank == 0 else (0.0, "")
        self.peak_total = peak * self.world

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
            self._early_stopping(row)
        if self.rank == 0:
            self.metrics.log(row)

    def _early_stopping(self, row: dict | None) -> None:
        """Stop after `patience` evaluations without a better validation loss (checkpoint + export there)."""
        patience = self.objective.patience
        if patience is None:
            return
        if self.best_val is None or self.last_val < self.best_val:
            self.best_val, self.evals_since_best = self.last_val, 0
        else:
            self.evals_since_best += 1
        if self.evals_since_best >= patience and self.step < self.stop_at:
            self.stopped_early, self.stop_at = True, self.step
            if row is not None:
                row["early_stopped"] = True

    # -- checkpoint --------------------------------------------------------------------------------
    def maybe_checkpoint(self) -> bool:
        if self.step % self.train.checkpoint_interval and self.step != self.stop_at:
            if self.rank == 0 and self.step % self.train.log_interval == 0:
                self.metrics.flush()
            return False
        started = time.perf_counter()
        self.save()
        self.stall = time.perf_counter() - started
        return True

    def save(self) -> None:
        """All ranks save + upload their files; rank 0 commits (fenced by the run lease), then GC."""
        tag = ckpt.tag_for(self.step)
        rank_dir = self.local / f"save-rank{self.rank}"
        self.engine.save(str(rank_dir), tag)
        files = ckpt.upload_rank_files(self.store, self.keys, self.step, rank_dir / tag)
        everyone = [None] * self.world
        dist.all_gather_object(everyone, files)
        if self.rank == 0:
            merged = {f["name"]: f for part in everyone for f in part}
            fence = lambda: self.spec.lease.assert_held(self.store, self.keys)  # noqa: E731
            ckpt.commit(
                self.store, self.keys, self.step, list(merged.values()), self._state(), self.spec.lease.epoch, fence
            )
            ckpt.garbage_collect(self.store, self.keys, self.train.keep_last, self.step, fence)
            self.metrics.flush()
            self.metrics.publish_tensorboard(self.step)
        dist.barrier()
        _remove_tree(rank_dir)

    def _state(self) -> dict:
        return {
            "step": self.step,
            "loader": self.loader.state_dict(),
            "dp_size": self.train.data_parallel,
            "pp": self.train.pipeline_stages,
            "world_size": self.world,
            "rng": ckpt.rng_state(),
            "tokens": self.loader.consumed * self.objective.tokens_per_sample(self.manifest),
            "dataset": self.manifest.dataset,
            "dataset_version": self.manifest.version,
            "compatibility": self.compatibility,
            "early_stopping": {
                "best_val": self.best_val,
                "evals_since_best": self.evals_since_best,
                "stopped": self.stopped_early,
            },
            "config": self.spec.config,
        }

    # -- export ------------------------------------------------------------------------------------
    def export(self) -> None:
        if self.train.export and (self.step >= self.train.max_steps or self.stopped_early):
            state_dict = self.engine.full_state_dict()
            if self.rank == 0:
                info = {
                    "step": self.step,
                    "val_loss": self.last_val,
                    "dataset": self.manifest.dataset,
                    "dataset_version": self.manifest.version,
                    "run": self.train.run,
                    "early_stopped": self.stopped_early,
                    "tokenizer_sha256": self.manifest.tokenizer.sha256,
                }
                if self.spec.init_from:  # warm start: the same object as run.json's `init_from`
                    info["warm_start"] = self.spec.init_from
                    info["init_from"] = self.spec.init_from["checkpoint"]
                run, raw = self.train.run, self.manifest.raw
                self.objective.export(self.store, run, self.model_config, state_dict, raw, info)
        if self.rank == 0:
            self.metrics.flush()
            self.metrics.publish_tensorboard(self.step)
        dist.barrier()


def _to_universal(local: Path, tag: str) -> str:
    """Convert a downloaded checkpoint to DeepSpeed's universal format (once per node); returns the new tag."""
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


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
