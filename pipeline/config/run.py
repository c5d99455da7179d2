"""The top-level run config: storage, Ray, and one section per stage."""

from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from ..storage import StorageSettings
from .base import Section
from .data import DataConfig
from .distill import DistillConfig
from .evaluate import EvalConfig
from .finetune import FinetuneConfig
from .quantize import QuantizeConfig
from .train import TrainConfig


class StorageConfig(Section):
    root: str = Field(
        default="file://.sora",
        description="Object-store root: file:///dir, a path, or s3://bucket/prefix. Datasets and runs live under it.",
    )
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, R2, moto...).")
    region: str | None = Field(default=None, description="S3 region (default from the AWS environment).")
    max_attempts: int = Field(default=8, ge=1, description="Attempts per storage request (throttling, 5xx).")

    @field_validator("root")
    @classmethod
    def _absolute_local_root(cls, root: str) -> str:
        # Ray workers run in their own working directories: a relative local root must be resolved
        # here, on the driver, or workers would read and write somewhere else.
        if "://" not in root:
            return f"file://{os.path.abspath(root)}"
        if root.startswith("file://") and not root.startswith("file:///"):
            return f"file://{os.path.abspath(root[len('file://') :])}"
        return root

    def settings(self) -> StorageSettings:
        return StorageSettings(endpoint_url=self.endpoint_url, region=self.region, max_attempts=self.max_attempts)


class RayConfig(Section):
    address: str | None = Field(default=None, description="Ray cluster address; None starts a local Ray.")
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray (default: all).")


class RunConfig(Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)

    @model_validator(mode="after")
    def _pipeline_fits_model(self) -> RunConfig:
        from sora import SoraConfig

        layers = SoraConfig.from_preset(self.train.model, **self.train.model_overrides).num_hidden_layers
        if self.train.pipeline_stages > layers:
            raise ValueError(f"pipeline_stages ({self.train.pipeline_stages}) exceeds the model's {layers} layers")
        return self

    @model_validator(mode="after")
    def _suites_fit_corpus(self) -> RunConfig:
        from .evaluate import fit_suites_to_sources  # the generative suites' default and code check

        fit_suites_to_sources(self.eval.suites, self.data.sources)
        ft = self.finetune
        if ft.task == "generate" and ft.suite not in self.eval.suites.enabled:  # refused before any training
            raise ValueError(
                f"finetune.task generate trains on the {ft.suite} suite: add {ft.suite} to eval.suites.enabled"
            )
        return self
