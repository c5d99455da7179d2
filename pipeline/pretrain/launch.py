"""Driver side of `sora pretrain`: pin the dataset versions (one dataset or a mixture), size the
model to their tokenizer, plan the warm start, and run the training job (pipeline/train/launch.py)
with `LanguageModeling`."""

from __future__ import annotations

from typing import Any

from sora import SoraConfig

from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys
from ..records import DatasetVersion
from ..storage import open_store
from ..train.launch import finished_export, run_training
from ..train.metrics import read_rows
from . import warm_start
from .mixture import pin_sources
from .objective import LanguageModeling


def model_config_for(config: RunConfig, manifest: DatasetVersion) -> SoraConfig:
    tokenizer = manifest.tokenizer
    overrides = dict(config.train.model_overrides)
    if "vocab_size" in overrides and overrides["vocab_size"] != tokenizer.vocab_size:
        raise UserError(f"model vocab_size {overrides['vocab_size']} != the dataset tokenizer's {tokenizer.vocab_size}")
    overrides.update(
        vocab_size=tokenizer.vocab_size,
        eos_token_id=tokenizer.eos_id,
        bos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    model = SoraConfig.from_preset(config.train.model, **overrides)
    model.max_position_embeddings = max(model.max_position_embeddings, manifest.seq_len)
    return model


def pretrain(config: RunConfig, quiet: bool = False, restart: bool = False) -> dict[str, Any]:
    """Train (or resume) `config.train.run`; returns the final metrics row and the export URI.

    A run whose export already holds its last step does no work (a repeated `sora run`).
    `restart` trains from step 0 even though the run has committed checkpoints that cannot be
    resumed from.
    """
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    keys = RunKeys(config.train.run)
    if not restart and finished_export(store, keys, config.train.max_steps):
        rows = read_rows(store, keys.metrics)
        return {"final": rows[-1] if rows else {}, "export": store.uri(keys.export), "skipped": True}
    sources = pin_sources(store, config, restart)
    manifest = sources[0][0]  # its tokenizer and sequence length are every source's (mixture.py checks)
    model_config = model_config_for(config, manifest)
    planned = []

    def plan_warm_start(resume_step):
        planned.append(warm_start.plan(store, config, manifest, model_config, resume_step))  # pins the parent
        return planned[-1]

    try:
        return run_training(
            config,
            store,
            manifest,
            model_config,
            "pretrain",
            LanguageModeling.for_run(config.train, sources),
            plan_warm_start=plan_warm_start,
            quiet=quiet,
            restart=restart,
        )
    finally:
        for lineage in planned:  # the child's first commit removed it already unless the job failed before
            warm_start.unpin(store, lineage, config.train.run)
