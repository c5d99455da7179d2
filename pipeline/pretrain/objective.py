"""Pretraining objective: next-token prediction on the packed token blocks of one dataset or a
weighted mixture (the `pipeline.train.objective.Objective` the training job runs for
`sora pretrain`). The samples stream from the manifests' shards through the node's shard cache
(pipeline/train/streaming.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sora import SoraConfig, SoraForCausalLM, causal_lm_loss

from ..errors import UserError
from ..records import DatasetVersion, ExportInfo, PinnedSource
from ..storage import ObjectStore
from ..train.export import ExportSource, parameter_sources
from ..train.loader import cache_directory
from ..train.shard_cache import ShardCache
from ..train.streaming import DataStream, StreamSettings, ValidationSamples


@dataclass
class LanguageModeling:
    """Pretraining: next-token prediction on the packed token blocks of the pinned datasets."""

    sources: list[tuple[DatasetVersion, float]] = field(default_factory=list)  # (manifest, weight)
    window: int = 8
    prefetch: int = 8
    on_exhausted: str = "repeat"
    cache_limit: int | None = None

    name = "causal_lm"
    patience: int | None = None  # no early stopping: pretraining runs its token budget

    @classmethod
    def for_run(cls, train, sources: list[tuple[DatasetVersion, float]]) -> LanguageModeling:
        return cls(sources, train.shuffle_window, train.prefetch, train.on_exhausted, train.cache_limit)

    def bind(self, store: ObjectStore, node_dir: Path) -> None:
        """Nothing to bind: the samples come from the manifests' shards."""

    @property
    def mixture(self) -> list[PinnedSource] | None:
        """The pinned mixture (lineage for the export), or None for a single dataset."""
        if len(self.sources) < 2:
            return None
        return [PinnedSource(dataset=m.dataset, dataset_version=m.version, weight=w) for m, w in self.sources]

    def _cache(self) -> ShardCache:
        shards = [e for m, _ in self.sources for split in ("train", "val") for e in m.split(split)]
        cache = ShardCache(cache_directory() / "shards", self.cache_limit, own={e.sha256 for e in shards})
        largest = max((e.bytes for m, _ in self.sources for e in m.split("train")), default=0)
        needed = len(self.sources) * (2 * self.window + self.prefetch) * largest
        if needed > cache.limit:
            raise UserError(
                f"node shard cache limit {cache.limit / 2**30:.2f} GiB is below what streaming needs: "
                f"{len(self.sources)} dataset(s) x (2 x shuffle_window {self.window} + prefetch {self.prefetch}) x "
                f"{largest / 2**20:.1f} MiB shards = {needed / 2**30:.2f} GiB; raise train.cache_limit or lower those"
            )
        return cache

    def train_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> DataStream:
        settings = StreamSettings(seed, self.window, self.prefetch, self.on_exhausted)
        return DataStream(store, self.sources, settings, self._cache())

    def validation_samples(self, store: ObjectStore, manifest: DatasetVersion, seed: int) -> ValidationSamples | None:
        if not all(m.split("val") for m, _ in self.sources):
            return None
        return ValidationSamples(store, self.sources, seed, self._cache())

    def build_model(self, model_config: SoraConfig, ds_config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        from ..train.engine import build_flat_model  # imports DeepSpeed: workers only

        return build_flat_model(model_config, ds_config)

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

    def export_skeleton(self, model_config: SoraConfig) -> SoraForCausalLM:
        """The pretrained causal LM (its tied LM head is stored once, as `save_pretrained` does)."""
        with torch.device("meta"):
            return SoraForCausalLM(model_config)

    def export_sources(self, module: torch.nn.Module) -> dict[str, ExportSource]:
        return parameter_sources(module)

    def export_info(self, info: ExportInfo) -> ExportInfo:
        mixture = self.mixture
        return info.model_copy(update={"data": mixture}) if mixture else info
