"""Training-loop settings shared by pretraining (`train:`) and fine-tuning (`finetune:`).

Both sections configure the same generic training job (pipeline/train), so their common fields are
declared once here: `LoopConfig` holds them with pretraining's defaults, and `FinetuneConfig`
inherits them, restating only the defaults it changes (the constraint and description of each
field live in its annotated type, so a restated default repeats nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from .base import Section

Workers = Annotated[
    int | tuple[int, int],
    Field(
        description="Ray Train workers (one GPU each when GPUs are used): N, or [min, max] for elastic training "
        "(the group shrinks to the workers left after a node loss or drain and grows back when nodes join; "
        "the global batch never changes)."
    ),
]
GlobalBatch = Annotated[
    int, Field(ge=1, description="Samples per optimizer step (seq_len-token blocks, or fine-tuning examples).")
]
MicroBatch = Annotated[int, Field(ge=1, description="Samples per worker per forward/backward.")]
PeakLr = Annotated[float, Field(gt=0, description="Peak learning rate.")]
MinLr = Annotated[float, Field(ge=0, description="Final learning rate of the cosine decay.")]
WarmupSteps = Annotated[int, Field(ge=0, description="Linear warmup steps.")]
WeightDecay = Annotated[float, Field(ge=0, description="AdamW weight decay (matrices only).")]
GradClip = Annotated[float, Field(ge=0, description="Global gradient-norm clipping (0 disables).")]
MaxSteps = Annotated[int, Field(ge=1, description="Optimizer steps to train (sets the LR schedule).")]
EvalInterval = Annotated[int, Field(ge=1, description="Validate every this many steps (and at the end).")]
EvalBatches = Annotated[int, Field(ge=1, description="Global batches of validation data per evaluation.")]
CheckpointInterval = Annotated[int, Field(ge=1, description="Checkpoint every this many steps (and at the end).")]
KeepLast = Annotated[int, Field(ge=1, description="Committed checkpoints to keep.")]
Seed = Annotated[int, Field(description="Seed of initialization and of the data order.")]
MaxFailures = Annotated[
    int,
    Field(
        ge=0,
        description="Training errors recovered from (restarting from the last committed checkpoint) before the "
        "run fails; lost nodes and drains are counted apart (max_node_losses).",
    ),
]
MaxNodeLosses = Annotated[
    int,
    Field(
        ge=0,
        description="Worker losses (a node or a worker process gone, not an error it raised) recovered from; "
        "expected on preemptible clusters, so counted apart from max_failures. Drains announced in advance "
        "do not count.",
    ),
]
CollectiveTimeout = Annotated[
    float,
    Field(
        ge=10,
        description="Seconds a rank waits in a collective for the others before the attempt fails "
        "(torch.distributed's process-group timeout). Shards, checkpoint downloads and the universal "
        "conversion happen outside collectives (ranks wait for each other in Ray Train's barrier), so this "
        "bounds steps and checkpoint saves.",
    ),
]

WorkersPerNode = Annotated[
    int,
    Field(
        ge=1,
        description="Elastic workers: nodes come and go whole, so the group trains only on multiples of this "
        "(8 on 8-GPU nodes): both ends of the range must be multiples, and the global batch must split over "
        "each multiple in the range (other counts in the range are never used).",
    ),
]

ResizeInterval = Annotated[
    float,
    Field(
        gt=0,
        description="Elastic workers: seconds between Ray Train's checks for room to grow the group (growing "
        "restarts it from the last committed checkpoint).",
    ),
]

PlacementTimeout = Annotated[
    float,
    Field(
        gt=0,
        description="Seconds an attempt waits for Ray to place its workers before deciding again with what "
        "the cluster has (Ray's view of free nodes lags by up to ~20 s, e.g. a node drained a moment ago).",
    ),
]


ActivationCheckpointing = Annotated[
    int,
    Field(
        ge=0,
        description="Activation checkpointing: recompute Transformer blocks in the backward pass instead of keeping "
        "their activations from the forward (less activation memory for up to one more forward pass of compute). "
        "off (or 0): none; every_layer (or 1): every block keeps only its input; n: one block in n (blocks 0, n, "
        "2n, ...), the others keep their activations. The same blocks under every strategy (torch's non-reentrant "
        "checkpoint); `sora plan` accounts for it.",
    ),
]


@dataclass(frozen=True)
class BatchSplit:
    """How one global batch is cut for a number of workers: the same samples in the same order."""

    workers: int
    data_parallel: int
    micro_batch: int
    grad_accum: int


class LoopConfig(Section):
    workers: Workers = 2
    global_batch: GlobalBatch = 16
    micro_batch: MicroBatch = 4
    lr: PeakLr = 1e-3
    min_lr: MinLr = 1e-4
    warmup_steps: WarmupSteps = 20
    weight_decay: WeightDecay = 0.1
    grad_clip: GradClip = 1.0
    max_steps: MaxSteps = 200
    eval_interval: EvalInterval = 50
    eval_batches: EvalBatches = 4
    checkpoint_interval: CheckpointInterval = 100
    keep_last: KeepLast = 2
    seed: Seed = 1234
    max_failures: MaxFailures = 2
    max_node_losses: MaxNodeLosses = 10
    collective_timeout_s: CollectiveTimeout = 600.0
    workers_per_node: WorkersPerNode = 1
    resize_interval_s: ResizeInterval = 60.0
    placement_timeout_s: PlacementTimeout = 20.0
    activation_checkpointing: ActivationCheckpointing = 0

    # How messages name this section's fields and its data-parallel size.
    prefix: ClassVar[str] = ""
    parallel_name: ClassVar[str] = "data-parallel size"

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value):
        if isinstance(value, list | tuple):
            if len(value) != 2 or not all(isinstance(v, int) for v in value):
                raise ValueError(f"workers must be N or [min, max], not {value!r}")
            value = tuple(value) if value[0] != value[1] else value[0]
        return value

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _activation_checkpointing(cls, value):
        # YAML reads a bare `off` as false (and `on` as true).
        named = {"off": 0, "every_layer": 1, False: 0, True: 1}
        if isinstance(value, str | bool) and value in named:
            return named[value]
        if isinstance(value, int) and value >= 0:
            return value
        raise ValueError(
            f"{cls.prefix}activation_checkpointing must be off, every_layer or a number n >= 1 (one block in n is "
            f"checkpointed; 1 = every_layer), not {value!r}"
        )

    @property
    def min_workers(self) -> int:
        return self.workers[0] if self.elastic else self.workers

    @property
    def max_workers(self) -> int:
        return self.workers[1] if self.elastic else self.workers

    @property
    def elastic(self) -> bool:
        return isinstance(self.workers, tuple)

    @property
    def worker_counts(self) -> list[int]:
        """The worker counts the run is planned for: every multiple of `workers_per_node` in the
        range (a fixed count: that count). Ray may place another count (a node with a GPU less):
        the run trains on it if the global batch splits over it, else that attempt fails."""
        if not self.elastic:
            return [self.workers]
        step = self.workers_per_node
        return list(range(self.min_workers, self.max_workers + 1, step))

    @property
    def stages(self) -> int:
        """Pipeline stages (1: data parallel only)."""
        return 1

    @property
    def data_parallel(self) -> int:
        """Data-parallel replicas at the largest worker count (every worker, unless pipeline stages split them)."""
        return self.max_workers // self.stages

    @property
    def grad_accum(self) -> int:
        return self.split(self.max_workers).grad_accum

    def split(self, workers: int) -> BatchSplit:
        """The global batch cut for `workers` (the count Ray Train started, in [min, max]).

        A fixed worker count takes `micro_batch` as given. An elastic range takes it as the largest
        micro-batch and uses the largest divisor of the per-replica share that fits, so every
        count in the range keeps the global batch (and with it the sample order and the schedule).
        """
        dp = workers // self.stages
        share, rest = divmod(self.global_batch, dp)
        micro = self.micro_batch
        if self.elastic:
            micro = max(d for d in range(1, self.micro_batch + 1) if share % d == 0)
        if rest or share % micro:
            raise ValueError(self._split_error(dp, workers))
        return BatchSplit(workers, dp, micro, share // micro)

    def _split_error(self, dp: int, workers: int) -> str:
        if not self.elastic:
            per_step = self.micro_batch * dp
            return (
                f"{self.prefix}global_batch ({self.global_batch}) must be divisible by micro_batch x "
                f"{self.parallel_name} ({self.micro_batch} x {dp} = {per_step})"
            )
        fits = [w for w in self.worker_counts if self.global_batch % (w // self.stages) == 0]
        if workers not in self.worker_counts:  # Ray placed a count off the node multiples
            return (
                f"{self.prefix}workers: Ray Train placed {workers} workers, not a multiple of workers_per_node "
                f"({self.workers_per_node}) (a node with fewer free GPUs?), and global_batch ({self.global_batch}) "
                f"cannot be split over {dp}; counts this run trains on: {self.worker_counts}"
            )
        return (
            f"{self.prefix}workers {list(self.workers)}: global_batch ({self.global_batch}) cannot be split over "
            f"{dp} data-parallel workers; every count in the range must divide it (counts that do: {fits})"
        )

    def check_loop(self) -> None:
        """The batch split (at every worker count) and the LR schedule; each section's validator calls it."""
        if self.min_workers < 1 or self.min_workers > self.max_workers:
            raise ValueError(f"{self.prefix}workers: need 1 <= min <= max, not {list(self.workers)}")
        step = self.workers_per_node
        if self.elastic and (self.min_workers % step or self.max_workers % step):
            raise ValueError(
                f"{self.prefix}workers {list(self.workers)}: both ends must be multiples of workers_per_node ({step})"
            )
        for workers in self.worker_counts:
            self.split(workers)
        if self.min_lr > self.lr:
            raise ValueError(f"{self.prefix}min_lr must not exceed {self.prefix}lr")
