"""Downstream suites built offline from a dataset version's held-out documents (DESIGN.md s.3).

`build_suites` writes, under `datasets/<name>/suites/v<N>/<settings id>/`:

    heldout_ppl/test.jsonl           {"text", "doc_hash"}                    lm-eval loglikelihood_rolling
    cloze/test.jsonl                 {"context", "endings", "label", "doc_hash", "offset"}   4-way choice
    classify/{train,validation,test}.jsonl   {"text", "label", "label_id", "doc_hash", "offset"}
    code_body/{train,validation,test}.jsonl  {"prompt", "answer", "name", "complete", "doc_hash", "offset"}
    docstring/{train,validation,test}.jsonl  {"prompt", "answer", "name", "complete", "doc_hash", "offset"}
    continuation/{train,validation,test}.jsonl  {"prompt", "answer", "complete", "doc_hash", "offset"}
                                     (the three: lm-eval generate_until)
    <task>/<lm-eval task>.yaml       one lm-eval task per suite, tag `sora_suites`
    suites.json                      the index: counts, classes, chance levels (generative suites: trivial
                                     baselines per metric), doc hashes, files + sha256

The held-out documents are streamed twice (`rows.py`: pass 1 picks, pass 2 cuts the picked
pieces), one shard at a time: the builder holds the capped suites and a hash per document (and a
rank key per labelled one, until the classify splits are drawn), never the split's text, so its
memory stays bounded wherever it runs (an evaluation task, the fine-tune driver).

The settings id is a hash of the suite settings, so changed settings build a new folder instead of
overwriting one. Every file is written create-if-absent and `suites.json` last: two concurrent
builders write identical bytes (the build is deterministic), and a reader trusts a folder only
once its index exists. Bad input raises before anything is written.

The stored YAML files name their data files relative to the suites folder; lm-eval needs local
absolute paths, so `materialize_suites` downloads a folder (verified) and rewrites them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from ..config.evaluate import GENERATIVE_SUITES, EvalConfig, SuiteConfig
from ..errors import UserError
from ..keys import DatasetKeys
from ..records import Chance, DatasetVersion, SuiteIndex, SuiteTask
from ..records.evaluation import INDEX
from ..storage import ObjectStore
from .generative import METRICS_OF, STOP, GenerativeRows
from .heldout import HeldoutSplit
from .rows import ClassifyRows, ClozeRows, PplRows, check_cloze

SUITES_FORMAT = 4  # 3: the generative suites code_body, docstring, continuation; 4: their newline in the
# answer, `complete`, examples ranked by document, code_body prompt cap, large documents skipped
TAG = "sora_suites"
TASK_NAMES = {
    "heldout_ppl": "sora_heldout_ppl",
    "cloze": "sora_cloze",
    "classify": "sora_classify",
    "code_body": "sora_code_body",
    "docstring": "sora_docstring",
    "continuation": "sora_continuation",
}
CLASSIFY_DELIMITER = "\nLabel: "  # between a snippet and its class name (sora-classifier strips it)


def settings_id(cfg: SuiteConfig) -> str:
    blob = json.dumps({"format": SUITES_FORMAT, **cfg.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def suites_prefix(manifest: DatasetVersion, cfg: SuiteConfig) -> str:
    return f"{DatasetKeys(manifest.dataset).suites(manifest.version)}/{settings_id(cfg)}"


def _suite_config(eval_config: EvalConfig | SuiteConfig) -> SuiteConfig:
    return eval_config.suites if isinstance(eval_config, EvalConfig) else eval_config


def read_index(
    store: ObjectStore, manifest: DatasetVersion, eval_config: EvalConfig | SuiteConfig
) -> SuiteIndex | None:
    """The suites index of this version and settings, or None when they were never built."""
    return SuiteIndex.load(store, suites_prefix(manifest, _suite_config(eval_config)))


def build_suites(store: ObjectStore, manifest: DatasetVersion, eval_config: EvalConfig | SuiteConfig) -> SuiteIndex:
    """Build (or reuse) the enabled suites of `manifest`'s version; returns the index (suites.json)."""
    cfg = _suite_config(eval_config)
    prefix = suites_prefix(manifest, cfg)
    existing = read_index(store, manifest, cfg)
    if existing is not None:
        return existing
    fraction = manifest.heldout_fraction  # for error messages
    builders: dict[str, Any] = {}
    if "heldout_ppl" in cfg.enabled:
        builders["heldout_ppl"] = PplRows(cfg)
    if "cloze" in cfg.enabled:
        builders["cloze"] = ClozeRows(cfg)
    if "classify" in cfg.enabled:
        builders["classify"] = ClassifyRows(cfg, fraction)
    for suite in GENERATIVE_SUITES:
        if suite in cfg.enabled:
            builders[suite] = GenerativeRows(suite, cfg, fraction)
    heldout = HeldoutSplit(store, manifest)
    for doc in heldout.documents():
        for builder in builders.values():
            builder.add(doc)
    order = heldout.hashes  # every document's hash, sorted: what is kept per document
    again = [builder for builder in builders.values() if builder.plan(order)]
    while again:  # pass 2 (and a third, when a cloze candidate needs more distractor draws)
        for doc in heldout.documents():
            for builder in again:
                builder.see(doc)
        again = [builder for builder in again if builder.plan(order)]
    files: dict[str, bytes] = {}
    tasks: dict[str, SuiteTask] = {}
    if "heldout_ppl" in builders:
        rows = builders["heldout_ppl"].rows()
        files["heldout_ppl/test.jsonl"] = _jsonl(rows)
        tasks["sora_heldout_ppl"] = _task_entry("heldout_ppl", {"test": rows}, chance=None)
    if "cloze" in builders:
        rows = builders["cloze"].rows()
        check_cloze(rows, len(order), cfg, fraction)
        files["cloze/test.jsonl"] = _jsonl(rows)
        tasks["sora_cloze"] = _task_entry(
            "cloze", {"test": rows}, chance={"uniform": 0.25, "majority": _majority(rows)}
        )
    if "classify" in builders:
        splits, info = builders["classify"].rows()
        for split, rows in splits.items():
            files[f"classify/{split}.jsonl"] = _jsonl(rows)
        entry = _task_entry("classify", splits, chance=info.pop("chance"))
        tasks["sora_classify"] = SuiteTask(**entry.to_dict(), **info)
    for suite in GENERATIVE_SUITES:
        if suite in builders:
            splits, info = builders[suite].rows()
            for split, rows in splits.items():
                files[f"{suite}/{split}.jsonl"] = _jsonl(rows)
            entry = _task_entry(suite, splits, chance=Chance(baselines=info.pop("baselines")))
            info["generation"] = {"until": STOP[suite], "max_gen_toks": getattr(cfg, f"{suite}_max_tokens")}
            tasks[TASK_NAMES[suite]] = SuiteTask(**entry.to_dict(), **info)
    for suite, name in TASK_NAMES.items():
        if suite in cfg.enabled:
            files[f"{suite}/{name}.yaml"] = task_yaml(suite, tasks[name]).encode()
    index = SuiteIndex(
        format=SUITES_FORMAT,
        dataset=manifest.dataset,
        version=manifest.version,
        tokenizer_sha256=manifest.tokenizer.sha256,
        heldout_docs=len(order),
        prefix=prefix,
        uri=store.uri(prefix),
        settings_id=settings_id(cfg),
        settings=cfg.model_dump(mode="json"),
        tag=TAG,
        tasks=tasks,
        files={name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()},
    )
    for name, data in sorted(files.items()):
        _create(store, f"{prefix}/{name}", data)
    return index.create(store)  # the stored one, if a concurrent builder published first


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()


def _majority(rows: list[dict]) -> float:
    counts = [sum(r["label"] == k for r in rows) for k in range(4)]
    return max(counts) / len(rows) if rows else 0.0


def _task_entry(suite: str, splits: dict[str, list[dict]], chance: dict | Chance | None) -> SuiteTask:
    return SuiteTask(
        suite=suite,
        counts={split: len(rows) for split, rows in splits.items()},
        doc_hashes={split: sorted({r["doc_hash"] for r in rows}) for split, rows in splits.items()},
        chance=chance,
    )


def _create(store: ObjectStore, key: str, data: bytes) -> None:
    """Create-if-absent; an existing object must hold the same bytes (a concurrent identical build)."""
    if not store.create(key, data) and hashlib.sha256(store.read(key)).digest() != hashlib.sha256(data).digest():
        raise RuntimeError(f"{store.uri(key)} exists with other content; suites are immutable per settings id")


def task_yaml(suite: str, task: SuiteTask) -> str:
    """lm-eval task YAML of one suite, its data files named relative to the suites folder."""
    # The datasets library cannot load an empty jsonl file: a split without rows is left out (its
    # file is still written, for the fine-tuning readers).
    splits = [split for split, count in task.counts.items() if count or split == "test"]
    spec: dict[str, Any] = {
        "task": TASK_NAMES[suite],
        "tag": [TAG],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: f"{suite}/{split}.jsonl" for split in splits}},
        "test_split": "test",
    }
    if suite == "heldout_ppl":
        spec |= {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                {"metric": metric, "aggregation": aggregation, "higher_is_better": False}
                for metric, aggregation in (
                    ("word_perplexity", "weighted_perplexity"),
                    ("byte_perplexity", "weighted_perplexity"),
                    ("bits_per_byte", "bits_per_byte"),
                )
            ],
        }
    elif suite in GENERATIVE_SUITES:
        if "train" in splits:
            spec |= {"training_split": "train", "fewshot_split": "train"}
        if "validation" in splits:
            spec["validation_split"] = "validation"
        spec |= {
            "output_type": "generate_until",
            "doc_to_text": "prompt",  # column names: the texts go to the model as they are, no template
            "doc_to_target": "answer",
            "target_delimiter": "",
            "generation_kwargs": {**task.model_extra["generation"], "do_sample": False},
            # registered by pipeline.suites.lm_eval_metrics (imported with pipeline.evaluation.harness)
            "metric_list": [
                {"metric": metric, "aggregation": "mean", "higher_is_better": True} for metric in METRICS_OF[suite]
            ],
        }
    else:
        acc = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
        spec |= {"output_type": "multiple_choice", "metric_list": acc}
    if suite == "cloze":
        spec |= {
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{endings}}",
            "doc_to_target": "{{label}}",
            "target_delimiter": "",
        }
    if suite == "classify":
        spec |= {
            "training_split": "train",
            "validation_split": "validation",
            "fewshot_split": "train",
            "doc_to_text": "{{text}}",
            "doc_to_choice": list(task.classes or ()),
            "doc_to_target": "{{label_id}}",
            "target_delimiter": CLASSIFY_DELIMITER,
        }
    spec["metadata"] = {"version": SUITES_FORMAT}
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def materialize_suites(
    store: ObjectStore,
    manifest: DatasetVersion,
    local_dir: str | Path,
    eval_config: EvalConfig | SuiteConfig | None = None,
) -> Path:
    """Download the built suites of `manifest`'s version into `local_dir` (sha256-verified) and write
    their task YAMLs with absolute local data paths; returns the folder to pass as lm-eval include_path.

    Raises UserError when the suites were not built (run `build_suites` first).
    """
    cfg = _suite_config(eval_config or EvalConfig())
    index = read_index(store, manifest, cfg)
    if index is None:
        raise UserError(
            f"no suites for dataset {manifest.dataset!r} v{manifest.version} with these eval.suites "
            f"settings under {store.uri(suites_prefix(manifest, cfg))}: build them first"
        )
    local = Path(local_dir).resolve()
    local.mkdir(parents=True, exist_ok=True)
    for name, meta in sorted(index.files.items()):
        path = local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.download_file(f"{index.prefix}/{name}", path, meta.sha256, meta.bytes)
        except (FileNotFoundError, ValueError) as error:
            uri = store.uri(f"{index.prefix}/{name}")
            raise UserError(f"suite file {uri} is missing or corrupt: {error}") from None
        if name.endswith(".yaml"):  # data files relative to the suites folder -> absolute local paths
            spec = yaml.safe_load(path.read_text())
            files = spec["dataset_kwargs"]["data_files"]
            spec["dataset_kwargs"]["data_files"] = {split: str(local / rel) for split, rel in files.items()}
            path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    (local / INDEX).write_bytes(index.to_bytes())
    return local
