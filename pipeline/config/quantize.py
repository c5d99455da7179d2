"""Configuration of the quantization stage (`sora quantize`, `quantize:`), validated before any worker starts.

Each method turns the source run's HF export into a weight-only quantized HF checkpoint of its own run,
`<run>-<method>` (torchao through transformers' `TorchAoConfig`): `int8` (per-row int8 weights; CPU and
CUDA) and `int4` (groupwise int4 in torchao's tinygemm layout; CUDA only, bfloat16). The stage also
times greedy generation before and after on the device it runs on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section
from .train import TrainConfig

QuantMethod = Literal["int8", "int4"]
METHODS: tuple[str, ...] = ("int8", "int4")


class QuantizeConfig(Section):
    enabled: bool = Field(
        default=False, description="Quantize in `sora run` and evaluate the quantized checkpoints in `sora evaluate`."
    )
    run: str | None = Field(default=None, description="Run whose HF export is quantized (default: train.run).")
    methods: list[QuantMethod] = Field(
        default_factory=lambda: ["int8"],
        min_length=1,
        description="Weight-only methods: int8 (CPU and CUDA), int4 (CUDA only). Each is a run `<run>-<method>`.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where quantization and the generation benchmark run: auto = a GPU if Ray has one."
    )
    int4_group_size: Literal[32, 64, 128, 256] = Field(
        default=128, description="int4: input features sharing one scale and zero point (smaller: closer, larger)."
    )
    prompt_tokens: int = Field(default=64, ge=1, description="Benchmark: tokens of the (fixed, seeded) prompt.")
    new_tokens: int = Field(default=64, ge=1, description="Benchmark: tokens generated greedily per repeat.")
    repeats: int = Field(default=3, ge=1, description="Benchmark: timed generations (median reported), after 1 warmup.")

    @field_validator("methods")
    @classmethod
    def _distinct(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must be distinct, got {methods}")
        return methods

    def source_run(self, train: TrainConfig | str) -> str:
        """The run whose export is quantized: `run`, else the config's (or the given) run."""
        return self.run or (train if isinstance(train, str) else train.run)

    def run_name(self, train: TrainConfig | str, method: str) -> str:
        """`<source run>-<method>`: each quantized checkpoint is a run of its own (its `hf/` export)."""
        return f"{self.source_run(train)}-{method}"
