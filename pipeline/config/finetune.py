"""Configuration of the fine-tune stage (`sora finetune`), validated before any worker starts.

A fine-tune is a training run like pretraining (same loop, engine, checkpoints and lease), on the
`classify` suite of the dataset version the pretrained run was trained on. It always runs twice
with the same budget: from the pretrained export and from random initialization, so the report
can show what pretraining bought.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Section
from .train import TrainConfig

INITS = ("pretrained", "scratch")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class FinetuneConfig(Section):
    method: Literal["full", "lora"] = Field(
        default="full", description="full: every weight trains; lora: low-rank adapters on attention/MLP projections."
    )
    from_run: str | None = Field(
        default=None, description="Pretrain run whose HF export initializes the model (default: train.run)."
    )
    strategy: Literal["zero1", "zero2", "zero3"] = Field(default="zero2", description="DeepSpeed ZeRO strategy.")
    workers: int = Field(default=2, ge=1, description="Ray Train workers (one GPU each when GPUs are used).")
    global_batch: int = Field(default=32, ge=1, description="Examples per optimizer step.")
    micro_batch: int = Field(default=8, ge=1, description="Examples per worker per forward/backward.")
    max_length: int = Field(default=128, ge=8, description="Tokens per example (longer snippets are truncated).")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(default=1e-4, ge=0, description="Final learning rate of the cosine decay.")
    warmup_steps: int = Field(default=10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay (matrices only).")
    grad_clip: float = Field(default=1.0, ge=0, description="Global gradient-norm clipping (0 disables).")
    max_steps: int = Field(default=120, ge=1, description="Optimizer steps (the budget both inits get).")
    eval_interval: int = Field(default=10, ge=1, description="Validate every this many steps.")
    eval_batches: int = Field(default=4, ge=1, description="Global batches of validation examples per evaluation.")
    patience: int | None = Field(
        default=4,
        ge=1,
        description="Early stopping: stop after this many evaluations without a lower validation loss (null: never).",
    )
    checkpoint_interval: int = Field(default=60, ge=1, description="Checkpoint every this many steps (and at the end).")
    keep_last: int = Field(default=1, ge=1, description="Committed checkpoints to keep per fine-tune run.")
    lora_rank: int = Field(default=16, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(default=32.0, gt=0, description="LoRA scaling alpha (update scaled by alpha / r).")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Module names that get LoRA adapters."
    )
    seed: int = Field(default=1234, description="Seed of the classifier head, LoRA init and example order.")
    max_failures: int = Field(default=2, ge=0, description="Worker failures Ray Train recovers from.")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.global_batch % (self.micro_batch * self.workers):
            raise ValueError(
                f"finetune.global_batch ({self.global_batch}) must be divisible by micro_batch x workers "
                f"({self.micro_batch} x {self.workers})"
            )
        if self.min_lr > self.lr:
            raise ValueError("finetune.min_lr must not exceed finetune.lr")
        return self

    def source_run(self, train: TrainConfig) -> str:
        return self.from_run or train.run

    def run_name(self, train: TrainConfig, init: str) -> str:
        """`<pretrain run>-ft-<method>-<init>`: each fine-tune is a run of its own (lease, checkpoints)."""
        return f"{self.source_run(train)}-ft-{self.method}-{init}"

    def train_config(self, train: TrainConfig, init: str, dataset: str, version: int) -> TrainConfig:
        """The training-loop settings of one fine-tune run (the loop only reads a TrainConfig)."""
        fields: dict[str, Any] = {
            name: getattr(self, name)
            for name in (
                "strategy",
                "workers",
                "global_batch",
                "micro_batch",
                "lr",
                "min_lr",
                "warmup_steps",
                "weight_decay",
                "grad_clip",
                "max_steps",
                "eval_interval",
                "eval_batches",
                "checkpoint_interval",
                "keep_last",
                "seed",
                "max_failures",
            )
        }
        inherited = ("model", "model_overrides", "use_gpu", "precision", "lease_seconds")
        return TrainConfig.model_validate(
            {
                **{name: getattr(train, name) for name in inherited},
                **fields,
                "run": self.run_name(train, init),
                "dataset": dataset,
                "dataset_version": version,
                "log_interval": self.eval_interval,
                "export": True,
            }
        )
