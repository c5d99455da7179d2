"""Evaluation stage: score one HF checkpoint with lm-evaluation-harness and store the results.

`evaluate_checkpoint_to_store` writes `runs/<run>/eval/<name>/`:

    samples_<task>.jsonl   lm-eval's per-document log (written first)
    results.json           lm-eval results (every metric with its stderr) + lineage + chance levels,
                           created last and create-if-absent: it exists whole or not at all

A `results.json` that already exists is the stage's commit marker: evaluating the same name again
returns it and does no work. Everything the user can get wrong (unknown task names, missing task
folders, a missing checkpoint, a classifier asked for other tasks) fails before any evaluation.

This runs where it is called, the model in this process: `sora evaluate` calls it inside a Ray task
on a worker (`workers.py`), after `stored_results` told the driver there is work to do.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

from ..config.evaluate import GENERATIVE_SUITES, EvalConfig
from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys, safe_relative
from ..records import DatasetVersion, EvalResults, SuiteIndex, read_dataset
from ..storage import ObjectStore
from ..suites.build import TASK_NAMES, build_suites, materialize_suites

# causal_lm: a pretrained (or scratch) LM, scored on every enabled suite; classifier: a fine-tuned
# SoraForSequenceClassification, on sora_classify; generator: a causal LM fine-tuned on generation,
# on the enabled generative suites (code_body, docstring, continuation).
Kind = Literal["causal_lm", "classifier", "generator"]
MODELS = {"causal_lm": "sora", "classifier": "sora-classifier", "generator": "sora"}


def results_key(run: str, name: str) -> str:
    return EvalResults.key(run, name)


def stored_results(store: ObjectStore, run: str, name: str, checkpoint_uri: str, kind: Kind) -> EvalResults | None:
    """The results already stored under `name` (None when there are none): cheap, no model. Results of
    another checkpoint under the same name are an error."""
    if kind not in MODELS:
        raise UserError(f"unknown checkpoint kind {kind!r}: use causal_lm, classifier or generator")
    existing = EvalResults.load(store, run, name)
    if existing is not None:
        stored = existing.lineage
        if (stored.checkpoint_uri, stored.kind) != (checkpoint_uri, kind):
            raise UserError(
                f"{store.uri(results_key(run, name))} already holds results of {stored.kind} "
                f"{stored.checkpoint_uri}; evaluate {checkpoint_uri} under another name"
            )
    return existing


def evaluate_checkpoint_to_store(
    config: RunConfig,
    store: ObjectStore,
    run: str,
    name: str,
    checkpoint_uri: str,
    kind: Kind,
    lineage: dict[str, Any],
    device: str | None = None,
) -> EvalResults:
    """Evaluate `checkpoint_uri` (an HF directory under the store root, or a local directory) on the
    built-in suites of the lineage's dataset version (sora_classify only with `eval.lm_classify`) plus
    `config.eval.tasks`; returns the stored results.json.

    `lineage` must name `dataset` and `dataset_version` (the version the suites come from); it is
    stored with the results together with the checkpoint URI, run, kind and tokenizer sha256.
    A `classifier` (SoraForSequenceClassification) runs `sora_classify` only, a `generator` the enabled
    generative suites only. `device` (cpu, cuda) overrides `config.eval.device`.
    """
    existing = stored_results(store, run, name, checkpoint_uri, kind)
    if existing is not None:
        return existing  # evaluated before: no work
    if "dataset" not in lineage:
        raise ValueError("lineage must name the dataset (and dataset_version) whose suites to evaluate on")
    tasks = _tasks(kind, config.eval)
    manifest = read_dataset(store, lineage["dataset"], lineage.get("dataset_version", "LATEST"))
    index = build_suites(store, manifest, config.eval)
    results = _run(store, manifest, checkpoint_uri, kind, tasks, config.eval, device or config.eval.device)
    return _store_results(store, run, name, results, index, manifest, checkpoint_uri, kind, lineage)


def _tasks(kind: Kind, eval_cfg: EvalConfig) -> list[str]:
    """The tasks a checkpoint of `kind` is scored on; bad settings fail here, before any work."""
    for path in eval_cfg.include_paths:
        if not Path(path).is_dir():
            raise UserError(f"eval.include_paths: {path} is not a directory of lm-eval task YAML files")
    builtin = [TASK_NAMES[s] for s in TASK_NAMES if s in eval_cfg.suites.enabled]
    if kind == "classifier":
        if "sora_classify" not in builtin:
            raise UserError("a classifier is evaluated on sora_classify: add classify to eval.suites.enabled")
        if eval_cfg.num_fewshot:
            raise UserError("a classifier is evaluated zero-shot: set eval.num_fewshot to 0 or null")
        return ["sora_classify"]
    if kind == "generator":
        generative = [TASK_NAMES[s] for s in GENERATIVE_SUITES if s in eval_cfg.suites.enabled]
        if not generative:
            raise UserError(
                "a generator is evaluated on the generative suites: add code_body, docstring or continuation "
                "to eval.suites.enabled"
            )
        return generative
    if not eval_cfg.lm_classify:
        builtin = [t for t in builtin if t != "sora_classify"]
    return builtin + [t for t in eval_cfg.tasks if t not in builtin]


def _run(
    store: ObjectStore,
    manifest: DatasetVersion,
    checkpoint_uri: str,
    kind: Kind,
    tasks: list[str],
    eval_cfg: EvalConfig,
    device: str,
) -> dict[str, Any]:
    """lm-eval's results for `tasks` on the checkpoint, with the suites materialized locally."""
    from .harness import run_lm_eval, task_manager

    with tempfile.TemporaryDirectory(prefix="sora-eval-") as tmp:
        suites_dir = materialize_suites(store, manifest, Path(tmp) / "suites", eval_cfg)
        # lm-eval's own task index costs seconds: build it only for names the local folders lack.
        manager = task_manager([suites_dir, *eval_cfg.include_paths], defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = task_manager([suites_dir, *eval_cfg.include_paths], defaults=True)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise UserError(
                f"lm-eval does not know the task(s) {', '.join(unknown)} (eval.tasks); check the names "
                "(`lm_eval --tasks list`) or add the folder holding their YAML to eval.include_paths"
            )
        checkpoint = fetch_checkpoint(store, checkpoint_uri, Path(tmp) / "checkpoint")
        return run_lm_eval(
            checkpoint,
            model=MODELS[kind],
            tasks=tasks,
            task_manager=manager,
            batch_size=eval_cfg.batch_size,
            device=device,
            limit=eval_cfg.limit,
            num_fewshot=eval_cfg.num_fewshot,
        )


def fetch_checkpoint(store: ObjectStore, uri: str, local: Path) -> Path:
    """A local copy of the HF checkpoint at `uri` (or `uri` itself when it is a local directory)."""
    if Path(uri).is_dir():
        directory = Path(uri)
    else:
        prefix = store.key_of(uri.rstrip("/")) if "://" in uri else uri.strip("/")
        keys = store.list(prefix)
        if not keys:
            raise UserError(f"checkpoint {uri} is missing: nothing under {store.uri(prefix)}")
        for key in keys:
            relative = safe_relative(key[len(prefix) + 1 :])
            store.download_file(key, local / relative)
        directory = local
    if not (directory / "config.json").exists():
        raise UserError(f"checkpoint {uri} is incomplete: no config.json (an HF export writes it)")
    index = directory / "model.safetensors.index.json"
    if index.exists():
        missing = sorted(
            set(json.loads(index.read_text())["weight_map"].values()) - {p.name for p in directory.iterdir()}
        )
    else:
        missing = [] if (directory / "model.safetensors").exists() else ["model.safetensors"]
    if missing:
        raise UserError(f"checkpoint {uri} is incomplete: missing {', '.join(missing)}")
    return directory


def _store_results(
    store: ObjectStore,
    run: str,
    name: str,
    results: dict[str, Any],
    index: SuiteIndex,
    manifest: DatasetVersion,
    checkpoint_uri: str,
    kind: Kind,
    lineage: dict[str, Any],
) -> EvalResults:
    """Sample logs first, then results.json (create-if-absent: the first evaluator's stays)."""
    from lm_eval.utils import handle_non_serializable

    prefix = f"{RunKeys(run).eval}/{safe_relative(name)}"
    for task, samples in sorted((results.get("samples") or {}).items()):
        body = "".join(json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n" for s in samples)
        store.write(f"{prefix}/samples_{safe_relative(task)}.jsonl", body.encode())
    tasks = index.tasks
    document = {
        "name": name,
        "kind": kind,
        "results": results["results"],
        "groups": results.get("groups", {}),
        "n-samples": results.get("n-samples", {}),
        "n-shot": results.get("n-shot", {}),
        "versions": results.get("versions", {}),
        "higher_is_better": results.get("higher_is_better", {}),
        "configs": results.get("configs", {}),
        "chance": {task: tasks[task].chance for task in results["results"] if task in tasks},
        "suites": {
            "uri": index.uri,
            "settings_id": index.settings_id,
            "counts": {task: entry.counts for task, entry in tasks.items()},
            "classes": tasks["sora_classify"].classes if "sora_classify" in tasks else None,
        },
        "lineage": {
            **lineage,
            "checkpoint_uri": checkpoint_uri,
            "run": run,
            "kind": kind,
            "dataset": manifest.dataset,
            "dataset_version": manifest.version,
            "tokenizer_sha256": manifest.tokenizer.sha256,
        },
        "lm_eval": {"limit": results.get("config", {}).get("limit"), "version": _lm_eval_version()},
    }
    return EvalResults.from_raw(document, default=_json_value(handle_non_serializable)).create(store)


def _json_value(fallback):
    """`json.dumps` default: records (Chance) as their dicts, anything else as lm-eval writes it."""

    def convert(value):
        return value.to_dict() if hasattr(value, "to_dict") else fallback(value)

    return convert


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
