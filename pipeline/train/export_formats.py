"""The exports of a finished run (`train.export_format`), written together by global rank 0.

- `runs/<run>/hf/`: always the Sora export. Everything in the pipeline reads it (evaluation,
  fine-tuning) and its config.json marks the run's export complete. It carries the Sora modeling
  code (export_remote_code.py), so it also loads with `trust_remote_code=True` without Sora.
- `runs/<run>/hf-llama/`: the same weights as a standard Llama checkpoint (export_llama.py), for
  `export_format: both`, and for `auto` when the model is Llama's architecture (`norm: rmsnorm`).

Both are fed the same tensors in one pass (the engine's gather or pipeline transfer happens once);
the Llama export finishes first, so a complete `hf/` implies a complete `hf-llama/`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from .export import EXPORT_SHARD_SIZE, ExportPlan, HFExport, clear_export
from .export_llama import LlamaExport, has_llama_equivalent, llama_export_key


def wants_llama_export(export_format: str, skeleton: PreTrainedModel) -> bool:
    """Whether this run's export includes the Llama checkpoint (config validation has already refused
    `both` for a norm Llama lacks)."""
    if export_format == "both" and not has_llama_equivalent(skeleton):
        raise ValueError(f"export_format: both, but {type(skeleton).__name__} ({skeleton.config.norm}) is not a Llama")
    return export_format in ("auto", "both") and has_llama_equivalent(skeleton)


class RunExports:
    """Rank 0's side of the run's exports: `write` every tensor of `plan` (any order), then `finish`."""

    def __init__(
        self,
        store: ObjectStore,
        run: str,
        skeleton: PreTrainedModel,
        plan: ExportPlan,
        scratch: Path,
        export_format: str = "auto",
        max_shard_size: int | str = EXPORT_SHARD_SIZE,
    ) -> None:
        """`plan`: the Sora export's (`export_plan(skeleton, max_shard_size)`); the Llama export is
        sharded by the same size."""
        self.skeleton = skeleton
        # Separate scratch folders: both exports name their shards model*.safetensors.
        self.sora = HFExport(store, run, plan, Path(scratch) / "sora")
        llama = wants_llama_export(export_format, skeleton)
        llama_scratch = Path(scratch) / "llama"
        self.llama = LlamaExport(store, run, skeleton, plan, llama_scratch, max_shard_size) if llama else None
        if self.llama is None:  # a Llama export of an earlier export of this run would look current
            clear_export(store, llama_export_key(run))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.sora.write(name, tensor)
        if self.llama is not None:
            self.llama.write(name, tensor)

    def finish(self, manifest: DatasetVersion, info: ExportInfo) -> dict[str, str]:
        """Tokenizer, lineage and configs of each export; returns format -> URI."""
        uris = {}
        if self.llama is not None:
            uris["llama"] = self.llama.finish(manifest, info)
        uris["sora"] = self.sora.finish(self.skeleton, manifest, info, remote_code=True)
        return uris
