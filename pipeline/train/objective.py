"""What a training run optimizes: the part of a run that differs between pretraining and fine-tuning.

The training job (`trainer.py`, `engine.py`, `checkpoint_manager.py`) is the same for every run
and knows objectives only through this protocol; `pipeline.pretrain.objective.LanguageModeling`,
`pipeline.finetune.objective.Classification`, `pipeline.finetune.generation.Generation` and
`pipeline.distill.objective.Distillation` implement it. An objective is built on the
driver and pickled into the `WorkerSpec`, so it holds only light settings; on each worker the
trainer calls `bind(store, node_dir)` once before anything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the driver imports this module; torch and transformers load on the workers
    import torch
    from transformers import PreTrainedModel

    from sora import SoraConfig

    from ..records import DatasetVersion, ExportInfo
    from ..storage import ObjectStore
    from .export import ExportSource


class Samples(Protocol):
    """A sample source: `len()` samples, `batch(ids)` -> the model inputs of those samples."""

    def __len__(self) -> int: ...

    def batch(self, ids: Any) -> tuple[torch.Tensor, ...]: ...


class SampleStream(Protocol):
    """The training samples: an infinite seeded sequence of sample ids (a pure function of the
    position) and the model inputs of any of them (loader.py's `TrainLoader` reads it)."""

    def ids(self, start: int, count: int) -> Any:
        """Sample ids at positions start .. start+count-1."""

    def seek(self, position: int, ids: Any) -> None:
        """About to read `ids` (at `position`): hold what they need, fetch ahead what follows."""

    def batch(self, ids: Any) -> tuple[torch.Tensor, ...]: ...

    def progress(self, consumed: int) -> dict[str, Any]:
        """Where the sequence is after `consumed` positions (epochs, per-dataset samples)."""

    def stop_position(self) -> int | None:
        """A position the run must stop before (a dataset ran out), or None."""

    def close(self) -> None: ...


class Objective(Protocol):
    name: str  # "causal_lm" (next-token loss, tied LM head) or a task name (accuracy reported)
    patience: int | None  # evaluations without a better validation loss before stopping; None: never

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        """On the worker: the run's store and the node-local directory it may cache into."""

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        """(model, keep_alive): keep_alive must live as long as the model (ZeRO-3 construction)."""

    def train_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> SampleStream:
        """The training sequence (seeded)."""

    def validation_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> Samples | None:
        """The validation samples, read in order (None: this run has no validation split)."""

    def tokens_per_sample(self, manifest: DatasetVersion) -> int: ...

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Scalar loss, the mean over the batch's targets."""

    def eval_sums(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """float64 tensor [loss x targets, targets, correct]."""

    def export_skeleton(self, model_config: SoraConfig) -> PreTrainedModel:
        """The plain HF model to export, built on the meta device: its class, config, tensor names,
        shapes and dtype decide the export's files (export.py `export_plan`); it holds no weights."""

    def export_sources(self, module: torch.nn.Module) -> dict[str, ExportSource]:
        """For each tensor of the export, the trained module's parameters it is computed from (the
        parameter itself, or a per-tensor transform such as a LoRA merge); the engine gathers
        them one tensor at a time (engine.py `export_weights`)."""

    def export_info(self, info: ExportInfo) -> ExportInfo:
        """The export's `sora_export.json`: the trainer's base lineage plus what the objective adds."""
