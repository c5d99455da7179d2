"""`sora evaluate`: which checkpoints of a run are evaluated, under which names.

    pretrained            the pretrain run's HF export (causal LM)           all LM suites + eval.tasks
    scratch               the same architecture, random init, same seed      all LM suites + eval.tasks
    ft-<method>-<init>    the fine-tuned classifiers (init: pretrained, scratch)   sora_classify

Results land in `runs/<pretrain run>/eval/<name>/`. An evaluation whose results exist is not
repeated (re-running does no work); a checkpoint that does not exist yet is skipped and reported.
"""

from __future__ import annotations

from typing import Any

import torch

from sora import SoraConfig, SoraForCausalLM

from ..config.finetune import INITS
from ..config.run import RunConfig
from ..keys import RunKeys
from ..records import DatasetVersion, ExportInfo, read_dataset
from ..records.export import load_export
from ..storage import ObjectStore, open_store
from ..train.export import upload_hf_model
from .stage import evaluate_checkpoint_to_store


def scratch_language_model(
    store: ObjectStore, run: str, model_config: SoraConfig, info: ExportInfo, manifest: DatasetVersion, seed: int
) -> str:
    """A randomly initialized LM of the pretrained architecture (the "scratch" column), stored once."""
    name = f"{run}-scratch-init"
    key = RunKeys(name).export
    if not store.exists(f"{key}/config.json"):
        torch.manual_seed(seed)
        model = SoraForCausalLM(model_config)
        lineage = info.model_copy(update={"run": name, "step": 0, "initialized_like": run, "seed": seed})
        upload_hf_model(store, name, model, manifest, lineage)
    return store.uri(key)


def evaluate_run(config: RunConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of the run that exists; returns {name: EvalResults or 'missing'}."""
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    run = config.finetune.source_run(config.train)
    export_key, info, hf_config = load_export(store, run)
    model_config = SoraConfig.from_dict(hf_config)
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    lineage = {"dataset": info.dataset, "dataset_version": info.dataset_version, "run": run}
    if info.data:  # a mixture: every dataset version and weight the model was pretrained on
        lineage["data"] = [source.to_dict() for source in info.data]
    checkpoints = {
        "pretrained": (store.uri(export_key), "causal_lm"),
        "scratch": (
            scratch_language_model(store, run, model_config, info, manifest, config.train.seed),
            "causal_lm",
        ),
    }
    for init in INITS:
        name = config.finetune.run_name(config.train, init)
        checkpoints[config.finetune.eval_name(init)] = (store.uri(RunKeys(name).export), "classifier")
    outcome: dict[str, Any] = {}
    for name, (uri, kind) in checkpoints.items():
        if not store.exists(f"{store.key_of(uri)}/config.json"):
            outcome[name] = "missing"
            continue
        outcome[name] = evaluate_checkpoint_to_store(config, store, run, name, uri, kind, {**lineage, "name": name})
    return outcome
