"""Training-loop settings shared by pretraining (`train:`) and fine-tuning (`finetune:`).

Both sections configure the same generic training job (pipeline/train), so their common fields are
declared once here: `LoopConfig` holds them with pretraining's defaults, and `FinetuneConfig`
inherits them, restating only the defaults it changes (the constraint and description of each
field live in its annotated type, so a restated default repeats nothing else).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from .base import Section

Workers = Annotated[int, Field(ge=1, description="Ray Train workers (one GPU each when GPUs are used).")]
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
    Field(ge=0, description="Worker failures Ray Train recovers from (restarting from the last committed checkpoint)."),
]


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

    # How messages name this section's fields and its data-parallel size.
    prefix: ClassVar[str] = ""
    parallel_name: ClassVar[str] = "data-parallel size"

    @property
    def data_parallel(self) -> int:
        """Data-parallel replicas (every worker, unless pipeline stages split them)."""
        return self.workers

    def check_loop(self) -> None:
        """The batch split and the LR schedule; each section's validator calls it where it fits."""
        per_step = self.micro_batch * self.data_parallel
        if self.global_batch % per_step:
            raise ValueError(
                f"{self.prefix}global_batch ({self.global_batch}) must be divisible by micro_batch x "
                f"{self.parallel_name} ({self.micro_batch} x {self.data_parallel} = {per_step})"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"{self.prefix}min_lr must not exceed {self.prefix}lr")
