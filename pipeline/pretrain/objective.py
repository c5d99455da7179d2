"""Pretraining objective: next-token prediction on the dataset's packed token blocks (the
`pipeline.train.objective.Objective` the training job runs for `sora pretrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sora import SoraConfig, SoraForCausalLM, causal_lm_loss

from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from ..train.loader import BlockStore


class LanguageModeling:
    """Pretraining: next-token prediction on the dataset's packed token blocks."""

    name = "causal_lm"
    patience: int | None = None  # no early stopping: pretraining runs its token budget

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        """Nothing to bind: the samples come from the manifest's shards."""

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        from ..train.engine import build_flat_model  # imports DeepSpeed: workers only

        return build_flat_model(model_config, ds_config)

    def samples(self, store: ObjectStore, manifest: DatasetVersion, split: str) -> BlockStore | None:
        entries = manifest.split("val" if split == "validation" else split)
        return BlockStore(store, entries) if entries else None

    def tokens_per_sample(self, manifest: DatasetVersion) -> int:
        return manifest.seq_len

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        return causal_lm_loss(module(input_ids=inputs, use_cache=False).logits, labels)

    def eval_sums(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        tokens = (labels != -100).sum()
        loss = causal_lm_loss(module(input_ids=inputs, use_cache=False).logits, labels)
        return torch.stack([loss.double() * tokens, tokens.double(), torch.zeros((), dtype=torch.float64)])

    def export_model(self, model_config: SoraConfig, state_dict: dict[str, torch.Tensor]) -> SoraForCausalLM:
        """The pretrained causal LM (a tied LM head may be absent from the state dict)."""
        model = SoraForCausalLM(model_config)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not model_config.tie_word_embeddings]
        if missing or unexpected:
            raise RuntimeError(f"export: state dict mismatch (missing {missing}, unexpected {unexpected})")
        return model

    def export_info(self, info: ExportInfo) -> ExportInfo:
        return info
