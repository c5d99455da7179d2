"""What a training run optimizes: the model it builds, the samples it reads, its loss, its export.

The training loop (`trainer.py`), the DeepSpeed engine (`engine.py`) and the checkpoint protocol
(`checkpoint.py`) are the same for every run; an objective is the part that differs. Pretraining
is `LanguageModeling`; fine-tuning adds `pipeline.finetune.objective.Classification`. Each has
the same small interface:

    build_model(model_config, ds_config) -> (model, keep_alive)
    samples(store, manifest, split) -> an object with len() and batch(ids) -> tuple of tensors
    loss(module, batch) -> scalar loss (mean over the batch's targets)
    eval_sums(module, batch) -> float64 tensor [loss x targets, targets, correct]
    export(store, run, model_config, state_dict, manifest, info) -> URI
"""

from __future__ import annotations

from typing import Any

import torch

from sora import SoraConfig, causal_lm_loss

from ..data.manifest_types import Manifest
from ..storage import ObjectStore
from .engine import build_flat_model
from .export import export_hf
from .loader import BlockStore


class LanguageModeling:
    """Pretraining: next-token prediction on the dataset's packed token blocks."""

    name = "causal_lm"
    patience: int | None = None  # no early stopping: pretraining runs its token budget

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        return build_flat_model(model_config, ds_config)

    def samples(self, store: ObjectStore, manifest: Manifest, split: str) -> BlockStore | None:
        entries = manifest.split("val" if split == "validation" else split)
        return BlockStore(store, entries) if entries else None

    def tokens_per_sample(self, manifest: Manifest) -> int:
        return manifest.seq_len

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        return causal_lm_loss(module(input_ids=inputs, use_cache=False).logits, labels)

    def eval_sums(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        tokens = (labels != -100).sum()
        loss = causal_lm_loss(module(input_ids=inputs, use_cache=False).logits, labels)
        return torch.stack([loss.double() * tokens, tokens.double(), torch.zeros((), dtype=torch.float64)])

    def export(
        self,
        store: ObjectStore,
        run: str,
        model_config: SoraConfig,
        state: dict[str, torch.Tensor],
        manifest: dict,
        info: dict,
    ) -> str:
        return export_hf(store, store, run, model_config, state, manifest, info)
