"""Configuration of the pretrain stage (`sora pretrain`), validated before any worker starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, model_validator

from .loop import LoopConfig

Strategy = Literal["zero1", "zero2", "zero3", "pipeline"]


class MixtureSource(BaseModel):
    """One dataset of a training mixture (`train.data`)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Dataset name.")
    weight: float = Field(gt=0, description="Share of the training samples drawn from it (weights are normalized).")
    version: int | Literal["LATEST"] = Field(
        default="LATEST", description="Manifest version; LATEST is resolved at the first launch and pinned."
    )


class TrainConfig(LoopConfig):
    """Pretraining: the shared loop settings (`LoopConfig`) plus the model, data and parallelism."""

    run: str = Field(
        default="sora-tiny",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name: checkpoints, metrics and the export live under <root>/runs/<run>/.",
    )
    model: str = Field(default="tiny", description="Model preset (tiny, small, 1b, 7b).")
    model_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="SoraConfig fields to override, e.g. {norm: adn}. vocab_size comes from the dataset's tokenizer.",
    )
    dataset: str | None = Field(default=None, description="Dataset name (default: data.name).")
    dataset_version: int | Literal["LATEST"] = Field(
        default="LATEST", description="Manifest version; LATEST is resolved at launch and pinned into the run."
    )
    data: list[MixtureSource] | None = Field(
        default=None,
        description="A weighted mixture of datasets, e.g. [{dataset: web, weight: 0.7}, {dataset: code, weight: 0.3}] "
        "(instead of dataset/dataset_version); each version is pinned at the first launch.",
    )
    on_exhausted: Literal["repeat", "stop"] = Field(
        default="repeat",
        description="When a dataset's samples run out: repeat it (its epoch count is in the metrics) or stop the run "
        "there (checkpoint and export).",
    )
    shuffle_window: int = Field(
        default=8,
        ge=1,
        description="Shards per shuffle window: samples are shuffled across the shards of a window, windows follow "
        "a shuffled shard order. Larger mixes more and needs more node cache.",
    )
    prefetch: int = Field(default=8, ge=0, description="Shards fetched ahead of need beyond the current window.")
    cache_limit: ByteSize | None = Field(
        default=None,
        description="Byte limit of the node's shard cache (e.g. 200GB); default: the node's SORA_CACHE_LIMIT, else "
        "half the cache filesystem's free space. It must hold (2 x shuffle_window + prefetch) shards per dataset.",
    )
    init_from: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name whose newest committed checkpoint initialises the weights (warm start, e.g. "
        "on a newer dataset version after a refresh).",
    )
    stop_after_steps: int | None = Field(
        default=None,
        ge=1,
        description="Checkpoint and exit after this step "
        "(e.g. before a maintenance window); rerun the same config to resume.",
    )
    async_checkpoint: bool = Field(
        default=True,
        description="Upload checkpoints in the background while training continues (the local save still "
        "blocks; a save waits for the previous upload and commit). false: training waits for each commit.",
    )
    strategy: Strategy = Field(default="zero3", description="zero3 (default), zero1, zero2, or pipeline.")
    zero_stage: int | None = Field(
        default=None, ge=0, le=3, description="ZeRO stage; implied by zero* strategies; pipeline allows 0 or 1."
    )
    pipeline_stages: int = Field(default=1, ge=1, description="Pipeline stages (strategy: pipeline).")
    offload: bool = Field(default=False, description="ZeRO-3: offload optimizer state and parameters to CPU.")
    use_gpu: bool | Literal["auto"] = Field(default="auto", description="auto: GPUs when the cluster has them.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    log_interval: int = Field(default=10, ge=1, description="Steps between metric flushes and progress lines.")
    record_sample_ids: bool = Field(
        default=False, description="Write the global sample ids of every step (audit of exact resume)."
    )
    export: bool = Field(default=True, description="Export a HF checkpoint to runs/<run>/hf at the end.")
    export_format: Literal["auto", "sora", "both"] = Field(
        default="auto",
        description="sora: runs/<run>/hf only (Sora classes, with their code for trust_remote_code). both: also a "
        "standard Llama checkpoint in runs/<run>/hf-llama (norm: rmsnorm only). auto: both for rmsnorm, else sora.",
    )
    lease_seconds: float = Field(
        default=120.0,
        ge=5,
        description="Run lease duration: one writer per run; renewed every third of it, so a crashed "
        "driver blocks the next launch for at most this long.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        zero = self.effective_zero_stage
        if self.strategy == "pipeline" and zero >= 2:
            raise ValueError(
                f"pipeline parallelism cannot be combined with ZeRO-{zero} (DeepSpeed: 'ZeRO-2 and ZeRO-3 are "
                "incompatible with pipeline parallelism'). Choose strategy: pipeline with zero_stage: 1, or "
                "strategy: zero3 without pipeline stages"
            )
        if self.strategy != "pipeline" and self.pipeline_stages > 1:
            raise ValueError(
                f"pipeline_stages: {self.pipeline_stages} needs strategy: pipeline (with zero_stage 0 or 1); "
                f"strategy {self.strategy} is data parallel only"
            )
        if (
            self.strategy.startswith("zero")
            and self.zero_stage is not None
            and self.zero_stage != int(self.strategy[-1])
        ):
            raise ValueError(f"strategy {self.strategy} conflicts with zero_stage: {self.zero_stage}")
        if self.elastic and self.pipeline_stages > 1:
            raise ValueError(
                f"workers {list(self.workers)} (elastic) needs a data-parallel strategy (zero1/2/3): Ray Train may "
                f"start any count in the range, and pipeline_stages: {self.pipeline_stages} needs a multiple of it"
            )
        if self.max_workers % self.pipeline_stages:
            raise ValueError(f"workers ({self.workers}) must be a multiple of pipeline_stages ({self.pipeline_stages})")
        self.check_loop()
        if self.data is not None:
            if self.dataset is not None or self.dataset_version != "LATEST":
                raise ValueError("train.data (a mixture) replaces train.dataset and train.dataset_version: set one")
            names = [source.dataset for source in self.data]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"train.data must name each dataset once, got {names}")
        if self.offload and self.strategy != "zero3":
            raise ValueError("offload is supported with strategy zero3 only")
        if self.export_format == "both":
            from sora import SoraConfig

            norm = SoraConfig.from_preset(self.model, **self.model_overrides).norm
            if norm != "rmsnorm":
                raise ValueError(
                    f"export_format: both needs norm: rmsnorm (Llama's architecture); norm {norm} has no Llama "
                    "equivalent: use export_format: sora (that export carries its modeling code)"
                )
        return self

    @property
    def effective_zero_stage(self) -> int:
        if self.strategy == "pipeline":
            return 1 if self.zero_stage is None else self.zero_stage
        return int(self.strategy[-1])

    @property
    def stages(self) -> int:
        return self.pipeline_stages
