"""Fine-tuning objective of `task: classify`: `SoraForSequenceClassification` on the classify suite
(the `pipeline.train.objective.Objective` the training job runs for `sora finetune`).

Where the weights start, LoRA and the export are shared with `Generation` (`objective_base.py`);
here: a fresh classifier head on the trunk (trained fully under LoRA too: `modules_to_save`),
cross-entropy over the classes, accuracy as the validation metric.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from sora import SoraConfig, SoraForSequenceClassification

from ..data.tokenizer_step import load_stored_tokenizer
from ..records import DatasetVersion
from ..storage import ObjectStore
from .examples import ExampleSet
from .objective_base import FinetuneObjective


class Classification(FinetuneObjective):
    """A classifier of the classify suite's snippets into its classes."""

    name = "classify"
    model_class = SoraForSequenceClassification
    auto_class = "AutoModelForSequenceClassification"
    lora_modules_to_save = ["score"]

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

    def model_config(self, model_config: SoraConfig) -> SoraConfig:
        return self.classifier_config(model_config)

    # -- data ------------------------------------------------------------------------------------
    def samples(self, store: ObjectStore, manifest: DatasetVersion, split: str) -> ExampleSet:
        tokenizer = load_stored_tokenizer(store, manifest.tokenizer)
        return ExampleSet(store, self.split_key(split), tokenizer, self.task.max_length, manifest.tokenizer.pad_id)

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
