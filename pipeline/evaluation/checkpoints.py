"""`sora evaluate`: which checkpoints of a run are evaluated, under which names.

    pretrained            the pretrain run's HF export (causal LM)           all LM suites + eval.tasks
    scratch               the same architecture, random init, same seed      all LM suites + eval.tasks
    ft-<method>-<init>    the fine-tuned classifiers (init: pretrained, scratch)   sora_classify
    ft-generate-<method>-<init>   the generative fine-tunes (`finetune.task: generate`)   the generative suites

Results land in `runs/<pretrain run>/eval/<name>/`. An evaluation whose results exist is not
repeated: the driver reads them and starts nothing (re-running does no work); a checkpoint that
does not exist yet is skipped and reported. What is left is evaluated in Ray tasks on the
cluster's workers (`workers.py`: a GPU each when there are GPUs), the scratch baseline built
there too: this process reads records and receives results, it never builds or loads a model.
"""

from __future__ import annotations

from typing import Any

from ..config.finetune import INITS
from ..config.run import RunConfig
from ..keys import RunKeys
from ..records import read_dataset
from ..records.export import load_export
from ..storage import open_store
from .derived import distill_checkpoints, quantized_checkpoints
from .stage import stored_results
from .workers import EvalJob, Scratch, evaluate_on_workers, scratch_uri


def evaluate_run(config: RunConfig) -> dict[str, Any]:
    """Evaluate every checkpoint of the run that exists; returns {name: EvalResults or 'missing'}."""
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    run = config.finetune.source_run(config.train)
    export_key, info, hf_config = load_export(store, run)
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    lineage = {"dataset": info.dataset, "dataset_version": info.dataset_version, "run": run}
    if info.data:  # a mixture: every dataset version and weight the model was pretrained on
        lineage["data"] = [source.to_dict() for source in info.data]
    scratch = Scratch(run=run, hf_config=hf_config, info=info, seed=config.train.seed)
    checkpoints = {
        "pretrained": (store.uri(export_key), "causal_lm", None),
        "scratch": (scratch_uri(store, run), "causal_lm", scratch),  # built by its task when missing
    }
    finetuned_kind = "generator" if config.finetune.task == "generate" else "classifier"
    for init in INITS:
        name = config.finetune.run_name(config.train, init)
        checkpoints[config.finetune.eval_name(init)] = (store.uri(RunKeys(name).export), finetuned_kind, None)
    checkpoints |= distill_checkpoints(config, store)  # the student and its baseline, beside the teacher
    checkpoints |= quantized_checkpoints(config, store)  # int8/int4 copies, on the same suites
    outcome: dict[str, Any] = {}
    jobs = []
    for name, (uri, kind, build) in checkpoints.items():
        existing = stored_results(store, run, name, uri, kind)
        if existing is not None:
            outcome[name] = existing
        elif build is None and not store.exists(f"{store.key_of(uri)}/config.json"):
            outcome[name] = "missing"
        else:
            jobs.append(EvalJob(name, uri, kind, {**lineage, "name": name}, build))
    if jobs:
        outcome |= evaluate_on_workers(config, store, run, manifest, jobs)
    return {name: outcome[name] for name in checkpoints}
