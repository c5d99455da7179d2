"""Configuration of the fine-tune stage (`sora finetune`), validated before any worker starts.

A fine-tune is a training run like pretraining (same loop, engine, checkpoints and lease), on a
suite of the dataset version the pretrained run was trained on: `task: classify` trains a
classifier on the `classify` suite, `task: generate` a causal LM on the answers of a generative
suite (`generate_suite`). It always runs twice with the same budget: from the pretrained export
and from random initialization, so the report can show what pretraining bought.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .evaluate import GENERATIVE_SUITES
from .loop import (
    CheckpointInterval,
    EvalInterval,
    GlobalBatch,
    KeepLast,
    LoopConfig,
    MaxSteps,
    MicroBatch,
    WarmupSteps,
    WeightDecay,
)
from .train import TrainConfig

INITS = ("pretrained", "scratch")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_GENERATE_SUITE = "code_body"
# Tokens per example when finetune.max_length is null: a classify snippet fits in 128; a generative
# prompt and its answer need ~150-250, and a prompt cut in training is not cut at evaluation.
DEFAULT_MAX_LENGTH = {"classify": 128, "generate": 384}


class FinetuneConfig(LoopConfig):
    """Fine-tuning: the shared loop settings (`LoopConfig`, fine-tuning defaults) plus the method."""

    prefix: ClassVar[str] = "finetune."
    parallel_name: ClassVar[str] = "workers"

    task: Literal["classify", "generate"] = Field(
        default="classify",
        description="classify: a classifier on the classify suite; generate: a causal LM trained on the answers "
        "of a generative suite (loss on the answer tokens only).",
    )
    generate_suite: Literal[GENERATIVE_SUITES] | None = Field(  # code_body | docstring | continuation
        default=None,
        description=f"The generative suite `task: generate` trains on (default {DEFAULT_GENERATE_SUITE}); "
        "it must be in eval.suites.enabled. Only with task: generate.",
    )
    method: Literal["full", "lora"] = Field(
        default="full", description="full: every weight trains; lora: low-rank adapters on attention/MLP projections."
    )
    from_run: str | None = Field(
        default=None, description="Pretrain run whose HF export initializes the model (default: train.run)."
    )
    strategy: Literal["zero1", "zero2", "zero3"] = Field(default="zero2", description="DeepSpeed ZeRO strategy.")
    global_batch: GlobalBatch = 32
    micro_batch: MicroBatch = 8
    max_length: int | None = Field(
        default=None,
        ge=8,
        description=f"Tokens per example (longer ones are cut; generate: prompt + answer, keeping the prompt's end "
        f"and the answer's start). null: by task, {DEFAULT_MAX_LENGTH['classify']} for classify (snippets of "
        f"~300 characters) and {DEFAULT_MAX_LENGTH['generate']} for generate (prompts of ~400-600 characters plus "
        "answers of ~120-300: ~150-250 tokens). `sora finetune` prints the share of train examples cut.",
    )
    warmup_steps: WarmupSteps = 10
    weight_decay: WeightDecay = 0.01
    max_steps: MaxSteps = 120
    eval_interval: EvalInterval = 10
    patience: int | None = Field(
        default=4,
        ge=1,
        description="Early stopping: stop after this many evaluations without a lower validation loss (null: never).",
    )
    checkpoint_interval: CheckpointInterval = 60
    keep_last: KeepLast = 1
    lora_rank: int = Field(default=16, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(default=32.0, gt=0, description="LoRA scaling alpha (update scaled by alpha / r).")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS), description="Module names that get LoRA adapters."
    )

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        self.check_loop()
        if self.task == "classify" and self.generate_suite is not None:
            raise ValueError("finetune.generate_suite is only used with finetune.task: generate (task is classify)")
        return self

    @property
    def suite(self) -> str:
        """The suite fine-tuned on: classify, or the generative suite of `task: generate`."""
        return "classify" if self.task == "classify" else self.generate_suite or DEFAULT_GENERATE_SUITE

    @property
    def example_length(self) -> int:
        """Tokens per example: `max_length`, else the task's default (`DEFAULT_MAX_LENGTH`)."""
        return self.max_length or DEFAULT_MAX_LENGTH[self.task]

    def source_run(self, train: TrainConfig | str) -> str:
        """The pretrain run fine-tuned from: `from_run`, else the config's (or the given) run."""
        return self.from_run or (train if isinstance(train, str) else train.run)

    def run_name(self, train: TrainConfig | str, init: str) -> str:
        """`<pretrain run>-<eval name>`: each fine-tune is a run of its own (lease, checkpoints)."""
        return f"{self.source_run(train)}-{self.eval_name(init)}"

    def eval_name(self, init: str) -> str:
        """The name its export is evaluated under (runs/<run>/eval/<name>/): `ft-<method>-<init>` for a
        classifier (the names before generative fine-tuning existed), `ft-generate-<method>-<init>` for
        a generator, so the two tasks never share a run or results."""
        task = "" if self.task == "classify" else f"{self.task}-"
        return f"ft-{task}{self.method}-{init}"

    def run_names(self, train: TrainConfig | str) -> dict[str, str]:
        """init -> fine-tune run name, for every init."""
        return {init: self.run_name(train, init) for init in INITS}

    def train_config(self, train: TrainConfig, init: str, dataset: str, version: int) -> TrainConfig:
        """The training-loop settings of one fine-tune run (the loop only reads a TrainConfig)."""
        fields: dict[str, Any] = self.model_dump(include={*LoopConfig.model_fields, "strategy"})
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
