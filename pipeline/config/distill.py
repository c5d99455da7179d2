"""Configuration of the distillation stage (`sora distill`), validated before any worker starts.

A distillation trains a smaller student on the teacher's dataset version with a loss mixing
next-token cross-entropy and the KL divergence to the frozen teacher's softened logits. It always
runs twice with the same token budget, seed and data order: with the teacher (`kl_weight`) and
without it (`kl_weight` 0, the same-size baseline), so the report can show what the teacher bought.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .loop import LoopConfig
from .train import TrainConfig

KINDS = ("distilled", "baseline")  # the two runs of a distillation, also their evaluation names' roots


class DistillConfig(LoopConfig):
    """Distillation: the shared loop settings (`LoopConfig`, pretraining's defaults) plus the
    teacher, the student and the loss."""

    prefix: ClassVar[str] = "distill."
    parallel_name: ClassVar[str] = "workers"

    enabled: bool = Field(default=False, description="Run the distillation in `sora distill` and evaluate it.")
    teacher_run: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Pretrain run whose HF export is the frozen teacher (default: train.run).",
    )
    student: str | None = Field(
        default=None,
        description="Model preset of the student (default: the teacher's architecture with half its layers, "
        "heads, hidden and MLP sizes).",
    )
    student_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="SoraConfig fields to override on the student (on the preset, or on the teacher's "
        "architecture when no preset is named). vocab_size is the teacher's.",
    )
    temperature: float = Field(default=2.0, gt=0, description="Softmax temperature T of the KL term.")
    kl_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="alpha: loss = (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student).",
    )
    strategy: Literal["zero1", "zero2", "zero3"] = Field(default="zero3", description="DeepSpeed ZeRO strategy.")

    @field_validator("student")
    @classmethod
    def _known_preset(cls, name: str | None) -> str | None:
        from sora import PRESETS

        if name is not None and name not in PRESETS:
            raise ValueError(f"distill.student: unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return name

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        self.check_loop()
        return self

    def teacher(self, train: TrainConfig | str) -> str:
        """The teacher's run: `teacher_run`, else the config's (or the given) pretrain run."""
        return self.teacher_run or (train if isinstance(train, str) else train.run)

    def student_label(self) -> str:
        """The student's name in run names: its preset (`half` for the halved teacher), and a short
        hash of its overrides, so another student never resumes this one's checkpoints."""
        label = self.student or "half"
        if self.student_overrides:
            digest = hashlib.sha256(json.dumps(self.student_overrides, sort_keys=True).encode()).hexdigest()
            label += f"-{digest[:8]}"
        return label

    def run_name(self, train: TrainConfig | str, kind: str) -> str:
        """`<teacher>-distill-<student>` (with the teacher) or `...-baseline` (the same student, no teacher)."""
        name = f"{self.teacher(train)}-distill-{self.student_label()}"
        return name if kind == "distilled" else f"{name}-baseline"

    def run_names(self, train: TrainConfig | str) -> dict[str, str]:
        """kind -> run name, for both runs."""
        return {kind: self.run_name(train, kind) for kind in KINDS}

    def train_config(
        self, train: TrainConfig, kind: str, data: dict[str, Any], model: str, model_overrides: dict[str, Any]
    ) -> TrainConfig:
        """The training-loop settings of one run: the same for both kinds (same seed, data order and
        token budget), the teacher's dataset (`data`: dataset/dataset_version or a mixture), the student
        model (`model` preset with `model_overrides`, as the driver resolved it)."""
        fields: dict[str, Any] = self.model_dump(include={*LoopConfig.model_fields, "strategy"})
        inherited = (
            "use_gpu", "precision", "lease_seconds", "log_interval", "async_checkpoint",
            "shuffle_window", "prefetch", "on_exhausted", "cache_limit",
        )  # fmt: skip
        return TrainConfig.model_validate(
            {
                **{name: getattr(train, name) for name in inherited},
                **fields,
                **data,
                "run": self.run_name(train, kind),
                "model": model,
                "model_overrides": model_overrides,
                "export": True,
            }
        )
