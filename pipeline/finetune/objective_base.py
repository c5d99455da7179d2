"""What every fine-tuning objective shares (`Classification`, `Generation`): where the weights start
(the pretrained export or random init), LoRA, the export's tensors and lineage.

`init: pretrained` loads the pretrain run's HF export (downloaded once per node in `bind`, which
the trainer calls before any collective: a node still downloading tens of GB keeps the others in
Ray Train's barrier, not in a collective with a timeout; under ZeRO-3 `from_pretrained`
partitions it while loading); `init: scratch` builds the same architecture from
random weights with the same seed. `method: lora` wraps either with `peft` LoRA adapters on the
attention/MLP projections; the export merges them (`lora_merge.py`), so every export is a plain
HF model. A subclass names its task, its HF model class and what it reads and optimizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from sora import SoraConfig

from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from ..train.export import ExportSource, parameter_sources
from ..train.export_download import download_export
from ..train.loader import ShuffledSamples
from .lora_merge import lora_export_sources
from .task import FinetuneTask

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}


class FinetuneObjective:
    """Built on the driver from the task alone (it is pickled to every worker); `bind` gives it the
    store and the node directory there."""

    name: ClassVar[str]  # the task: what the export's lineage and the trainer's metrics call it
    model_class: ClassVar[type]  # the plain HF class trained and exported
    auto_class: ClassVar[str]  # its transformers Auto class, which builds it partitioned under ZeRO-3
    lora_modules_to_save: ClassVar[list[str] | None] = None  # modules LoRA leaves fully trainable

    def __init__(self, task: FinetuneTask) -> None:
        self.task = task
        self.patience = task.patience
        self.store: ObjectStore | None = None
        self.node_dir: Path | None = None
        self.pretrained_dir: Path | None = None  # the node's copy of the pretrained export (bind)

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        """The worker's store and node folder; downloads the pretrained export here, before any
        collective (`pipeline.train.trainer.Trainer` binds first), never in `build_model`."""
        self.store, self.node_dir = store, node_dir
        if self.task.init == "pretrained":
            self.pretrained_dir = self._pretrained_directory()

    # -- model -----------------------------------------------------------------------------------
    def model_config(self, model_config: SoraConfig) -> SoraConfig:
        """The trained (and exported) model's config, from the pretrained one."""
        return model_config

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        config = self.model_config(model_config)
        context = None
        if ds_config["zero_optimization"]["stage"] == 3:
            from transformers.integrations import HfDeepSpeedConfig

            context = HfDeepSpeedConfig(ds_config)  # from_pretrained / from_config partition while building
        torch.manual_seed(self.task.seed)  # a new head (and scratch weights) start identically on every rank
        if self.task.init == "pretrained":
            if self.pretrained_dir is None:
                raise RuntimeError("bind() the objective before building the model: it downloads the export")
            model = self.model_class.from_pretrained(self.pretrained_dir, config=config, dtype=torch.float32)
        elif context is not None:
            import transformers

            model = getattr(transformers, self.auto_class).from_config(config)
        else:
            model = self.model_class(config)
        if self.task.method == "lora":
            model = self._with_lora(model)
        return model, context

    def _with_lora(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = self.task.lora
        torch.manual_seed(self.task.seed + 1)
        config = LoraConfig(
            r=lora["rank"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["targets"],
            modules_to_save=self.lora_modules_to_save,
        )
        return get_peft_model(model, config)

    def _pretrained_directory(self) -> Path:
        """The pretrained export, downloaded once per node (sizes verified) into a folder named by
        what it holds: the export's URI, every file's size and its `sora_export.json` (run, step,
        val loss). Another store, or a re-export under the same run name (`--restart`), gets a
        folder of its own instead of a stale copy."""
        return download_export(self.store, self.task.init_from, self.node_dir, "init-pretrained")

    # -- data ------------------------------------------------------------------------------------
    def train_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> ShuffledSamples:
        return ShuffledSamples(self.samples(store, manifest, "train"), seed)

    def validation_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> Any:
        return self.samples(store, manifest, "validation")

    def samples(self, store: ObjectStore, manifest: DatasetVersion, split: str) -> Any:
        """One split of the suite, tokenized: `len()` and `batch(ids)` (a subclass's example set)."""
        raise NotImplementedError

    def split_key(self, split: str) -> str:
        return f"{self.task.suite_prefix}/{SPLIT_FILES[split]}"

    def tokens_per_sample(self, manifest: DatasetVersion) -> int:
        return self.task.max_length

    # -- export ----------------------------------------------------------------------------------
    def export_skeleton(self, model_config: SoraConfig) -> torch.nn.Module:
        """The plain HF model (LoRA merged into the weights), on the meta device."""
        config = self.model_config(model_config)
        with torch.device("meta"):
            return self.model_class(config)

    def export_sources(self, module: torch.nn.Module) -> dict[str, ExportSource]:
        """The trained parameters under the plain model's names (with LoRA, merged: `lora_merge.py`)."""
        return lora_export_sources(module) if self.task.method == "lora" else parameter_sources(module)

    def export_info(self, info: ExportInfo) -> ExportInfo:
        """Which task, method and init, and which suite build it learned from."""
        task = self.task
        init_from = self.store.uri(task.init_from) if task.init_from else None
        update = {"task": self.name, "method": task.method, "init": task.init, "suite_prefix": task.suite_prefix}
        return info.model_copy(update={**update, "init_from": init_from})
