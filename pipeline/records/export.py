"""`sora_export.json`: what an exported HF checkpoint (`runs/<run>/hf/`) was trained on and how.

Written into the export folder before `config.json` (whose presence marks the export complete).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..keys import RunKeys
from ..storage import ObjectStore
from .base import Record
from .run import PinnedSource, WarmStartLineage

FILE = "sora_export.json"


class ExportInfo(Record):
    step: int
    val_loss: float | None = None
    dataset: str
    dataset_version: int
    data: list[PinnedSource] | None = None  # a mixture: every dataset version and its weight
    run: str
    early_stopped: bool = False
    data_exhausted: bool = False  # stopped where a dataset ran out (train.on_exhausted: stop)
    tokenizer_sha256: str | None = None
    warm_start: WarmStartLineage | None = None  # a warm-started pretrain run: run.json's init_from
    init_from: str | None = None  # URI of the checkpoint or export the weights started from
    # fine-tuned classifiers
    task: str | None = None
    method: str | None = None
    init: str | None = None
    suite_prefix: str | None = None  # the classify suite build it learned from
    # quantized checkpoints (pipeline/quantize): method, torchao config, source export URI
    quantization: dict | None = None
    # distilled students (pipeline/distill): teacher export (key and identity), temperature, kl_weight
    distill: dict | None = None

    def finished(self, max_steps: int) -> bool:
        return self.step >= max_steps or self.early_stopped or self.data_exhausted

    def write_local(self, folder: Path) -> None:
        (folder / FILE).write_text(self.to_bytes().decode())

    @classmethod
    def load(cls, store: ObjectStore, run: str) -> ExportInfo | None:
        """The export's info, or None when the run has no export (or an incomplete one)."""
        try:
            return cls.from_bytes(store.read(f"{RunKeys(run).export}/{FILE}"))
        except FileNotFoundError:
            return None


def load_export(store: ObjectStore, run: str) -> tuple[str, ExportInfo, dict]:
    """(export key, info, HF `config.json` as a dict) of a run's complete export; a clear error if absent."""
    import json

    key = RunKeys(run).export
    if not store.exists(f"{key}/config.json") or not store.exists(f"{key}/{FILE}"):
        raise UserError(
            f"run {run!r} has no complete pretrained export at {store.uri(key)}: run `sora pretrain` to its "
            "last step first, or set finetune.from_run to a run that has one"
        )
    return key, ExportInfo.load(store, run), json.loads(store.read(f"{key}/config.json"))
