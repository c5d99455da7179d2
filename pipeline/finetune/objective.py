"""Fine-tuning objective: `SoraForSequenceClassification` on the classify suite (the
`pipeline.train.objective.Objective` the training job runs for `sora finetune`).

`init: pretrained` loads the pretrain run's HF export (downloaded once per node; under ZeRO-3
`from_pretrained` partitions it while loading) and adds a fresh classifier head; `init: scratch`
builds the same architecture from random weights with the same seed. `method: lora` wraps either
with `peft` LoRA adapters on the attention/MLP projections (the head trains fully); the export
merges the adapters, so every export is a plain HF `SoraForSequenceClassification`.
"""

from __future__ import annotations

import copy
import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sora import SoraConfig, SoraForSequenceClassification

from ..data.tokenizer_step import load_stored_tokenizer
from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from ..train.export import ExportSource, parameter_sources
from ..train.loader import ShuffledSamples
from ..train.node_lock import node_lock
from .examples import ExampleSet
from .task import FinetuneTask

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}


def _plain_name(name: str) -> str:
    """A peft-wrapped parameter's name in the merged plain model (what `merge_and_unload` leaves)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


@torch.no_grad()
def _merge(layer: torch.nn.Module, base: torch.Tensor) -> torch.Tensor:
    """peft's merge of a LoRA layer's active adapters into its base weight (`LoraLayer.merge`), in
    fp32: the export is fp32, and in a bf16 run the parameters are bf16. peft's `get_delta_weight`
    upcasts only on CPU, so on a GPU it would round B @ A and the sum to bf16 (a small update to a
    large weight is lost); here the base is upcast and the delta computed as peft does
    (`Linear.get_delta_weight`: B @ A, transposed if fan_in_fan_out, x scaling) from fp32 copies."""
    from peft.utils.other import transpose

    weight = base.detach().to(torch.float32, copy=True)  # copy: never add into the parameter itself
    for adapter in layer.active_adapters:
        a, b = layer.lora_A[adapter].weight.float(), layer.lora_B[adapter].weight.float()
        weight += transpose(b @ a, layer.fan_in_fan_out) * layer.scaling[adapter]
    return weight


class Classification:
    """Built on the driver from the task alone (it is pickled to every worker); `bind` gives it the
    store and the node directory there."""

    name = "classify"

    def __init__(self, task: FinetuneTask) -> None:
        self.task = task
        self.patience = task.patience
        self.store: ObjectStore | None = None
        self.node_dir: Path | None = None

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        self.store, self.node_dir = store, node_dir

    # -- model -----------------------------------------------------------------------------------
    def classifier_config(self, model_config: SoraConfig) -> SoraConfig:
        config = copy.deepcopy(model_config)
        config.num_labels = len(self.task.classes)
        config.id2label = dict(enumerate(self.task.classes))
        config.label2id = {name: i for i, name in enumerate(self.task.classes)}
        config.use_cache = False
        # The classifier pools the last real token, so it must be evaluated on inputs cut where
        # training cut them; saved in config.json for `sora-classifier` (and any HF user).
        config.classifier_max_length = self.task.max_length
        return config

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        config = self.classifier_config(model_config)
        context = None
        if ds_config["zero_optimization"]["stage"] == 3:
            from transformers.integrations import HfDeepSpeedConfig

            context = HfDeepSpeedConfig(ds_config)  # from_pretrained / from_config partition while building
        torch.manual_seed(self.task.seed)  # the head (and scratch weights) start identically on every rank
        if self.task.init == "pretrained":
            model = SoraForSequenceClassification.from_pretrained(
                self._pretrained_directory(), config=config, dtype=torch.float32
            )
        elif context is not None:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = SoraForSequenceClassification(config)
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
            modules_to_save=["score"],
        )
        return get_peft_model(model, config)

    def _pretrained_directory(self) -> Path:
        """The pretrained export, downloaded once per node (sizes verified) into a folder named by
        what it holds: the export's URI, every file's size and its `sora_export.json` (run, step,
        val loss). Another store, or a re-export under the same run name (`--restart`), gets a
        folder of its own instead of a stale copy."""
        prefix = self.task.init_from
        sizes = {key: self.store.size(key) for key in sorted(self.store.list(prefix))}
        fingerprint = hashlib.sha256(self.store.uri(prefix).encode())
        for key, size in sizes.items():
            fingerprint.update(f"{key}\0{size}\0".encode())
        fingerprint.update(self.store.read(f"{prefix}/sora_export.json"))
        target = self.node_dir / f"init-pretrained-{fingerprint.hexdigest()[:16]}"
        with node_lock(target.with_name(target.name + ".lock")):
            done = target / ".complete"
            if not done.exists():
                for key, size in sizes.items():
                    self.store.download_file(key, target / key.rsplit("/", 1)[-1], None, size)
                done.touch()
        return target

    # -- data ------------------------------------------------------------------------------------
    def train_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> ShuffledSamples:
        return ShuffledSamples(self.samples(store, manifest, "train"), seed)

    def validation_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> ExampleSet:
        return self.samples(store, manifest, "validation")

    def samples(self, store: ObjectStore, manifest: DatasetVersion, split: str) -> ExampleSet:
        tokenizer = load_stored_tokenizer(store, manifest.tokenizer)
        key = f"{self.task.suite_prefix}/{SPLIT_FILES[split]}"
        return ExampleSet(store, key, tokenizer, self.task.max_length, manifest.tokenizer.pad_id)

    def tokens_per_sample(self, manifest: DatasetVersion) -> int:
        return self.task.max_length

    # -- loss ------------------------------------------------------------------------------------
    @staticmethod
    def _logits(module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, mask, _ = batch
        return module(input_ids=inputs, attention_mask=mask).logits.float()

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(self._logits(module, batch), batch[2])

    def eval_sums(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        logits, labels = self._logits(module, batch), batch[2]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(-1) == labels).sum()
        return torch.stack([loss.double(), torch.tensor(float(len(labels)), dtype=torch.float64), correct.double()])

    # -- export ----------------------------------------------------------------------------------
    def export_skeleton(self, model_config: SoraConfig) -> SoraForSequenceClassification:
        """A plain `SoraForSequenceClassification` (LoRA merged into the weights), on the meta device."""
        config = self.classifier_config(model_config)
        with torch.device("meta"):
            return SoraForSequenceClassification(config)

    def export_sources(self, module: torch.nn.Module) -> dict[str, ExportSource]:
        """The trained parameters under the plain model's names; with LoRA each adapted weight is
        merged on its own, as `merge_and_unload` would (base + B @ A x scaling), from the base weight
        and its two adapter matrices, and the head is the trained copy peft keeps (`modules_to_save`)."""
        if self.task.method != "lora":
            return parameter_sources(module)
        from peft.tuners.lora import LoraLayer

        sources: dict[str, ExportSource] = {}
        merged: set[int] = set()
        for path, layer in module.named_modules():
            if isinstance(layer, LoraLayer):
                base = layer.get_base_layer().weight
                adapters = [p for a in layer.active_adapters for p in (layer.lora_A[a].weight, layer.lora_B[a].weight)]
                merged.update(id(p) for p in (base, *adapters))
                sources[_plain_name(f"{path}.weight")] = ExportSource([base, *adapters], partial(_merge, layer, base))
        for name, param in module.named_parameters():
            if id(param) not in merged and ".original_module." not in name and "lora_" not in name:
                sources[_plain_name(name)] = ExportSource([param], lambda param=param: param)
        return sources

    def export_info(self, info: ExportInfo) -> ExportInfo:
        """Which task, method and init, and which suite build it learned from."""
        task = self.task
        init_from = self.store.uri(task.init_from) if task.init_from else None
        update = {"task": "classify", "method": task.method, "init": task.init, "suite_prefix": task.suite_prefix}
        return info.model_copy(update={**update, "init_from": init_from})
