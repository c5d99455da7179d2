"""Generative fine-tuning (`finetune.task: generate`) on the pretrain stage's loop: 2 CPU workers,
DeepSpeed, full and LoRA, from the pretrained export and from scratch, exported as plain
`SoraForCausalLM`s whose answer-token loss on the validation split is below where they started."""

import json

import numpy as np
import pytest
import torch
from evalgen import CLASSES, labelled_documents

from pipeline.config.run import RunConfig
from pipeline.finetune.generation import Generation
from pipeline.finetune.launch import finetune, finetune_on_suite
from pipeline.finetune.task import FinetuneTask
from pipeline.keys import RunKeys
from pipeline.records import read_dataset
from pipeline.records.export import load_export
from pipeline.train.metrics import read_rows
from sora import SoraConfig, SoraForCausalLM

pytestmark = pytest.mark.distributed

SUITE_PREFIX = "handmade-suites/continuation"
SOURCE = "handmade"  # a copy of the pretrained export: these runs never share names with the end-to-end test's


def _with(config: RunConfig, **finetune_fields) -> RunConfig:
    raw = config.model_dump(mode="json")
    raw["finetune"].update(finetune_fields)
    suite = finetune_fields.get("generate_suite")
    if suite and suite not in raw["eval"]["suites"]["enabled"]:  # the run config refuses it otherwise
        raw["eval"]["suites"]["enabled"].append(suite)
    return RunConfig.model_validate(raw)


def copy_export(store) -> None:
    for key in store.list(RunKeys("base").export):
        store.write(key.replace("runs/base/", f"runs/{SOURCE}/", 1), store.read(key))


def write_suite(store) -> None:
    """Rows of the generative-suite contract from the labelled corpus: a document's first line as the
    prompt, its class name and second line as the answer (learnable in a few steps)."""
    rows = []
    for doc in labelled_documents(seed=1):
        if doc["topic"] not in CLASSES:
            continue
        header, first, second = doc["text"].split("\n")[:3]
        answer = f"{doc['topic']}: {second.strip()}\n"
        rows.append({"prompt": f"{header}\n{first}\n", "answer": answer, "doc_hash": header})
    splits = {"train": rows[:160], "validation": rows[160:192]}
    for split, part in splits.items():
        store.write(f"{SUITE_PREFIX}/{split}.jsonl", "".join(json.dumps(r) + "\n" for r in part).encode())


def answer_loss(objective: Generation, model: torch.nn.Module, store, manifest) -> float:
    """Answer-token loss of `model` on the whole validation split (the objective's own eval sums)."""
    examples = objective.samples(store, manifest, "validation")
    model.eval()
    with torch.no_grad():
        sums = objective.eval_sums(model, examples.batch(np.arange(len(examples))))
    return float(sums[0] / sums[1])


def check_runs(config: RunConfig, store, method: str, tmp_path) -> dict[str, tuple[float, float]]:
    """For each init: the export is a plain SoraForCausalLM with the generate lineage; returns the
    validation answer loss (at the start, of the export)."""
    _, info, hf_config = load_export(store, SOURCE)
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    losses = {}
    for init in ("pretrained", "scratch"):
        run = f"{SOURCE}-ft-generate-{method}-{init}"
        rows = read_rows(store, RunKeys(run).metrics)
        assert rows[-1]["step"] == 8 and all(0 <= r["val_accuracy"] <= 1 for r in rows if "val_accuracy" in r)
        target = tmp_path / run
        for key in store.list(RunKeys(run).export):
            store.download_file(key, target / key.rsplit("/", 1)[-1])
        exported = SoraForCausalLM.from_pretrained(target)
        lineage = json.loads((target / "sora_export.json").read_text())
        assert (lineage["task"], lineage["method"], lineage["init"]) == ("generate", method, init)
        assert lineage["suite_prefix"] == SUITE_PREFIX and (target / "tokenizer.json").exists()
        assert not any("lora" in name for name, _ in exported.named_parameters())
        # Where the run started: the objective's own model before any step (what the engine built).
        ft = config.finetune
        lora = {"rank": ft.lora_rank, "alpha": ft.lora_alpha, "dropout": ft.lora_dropout, "targets": ft.lora_targets}
        init_from = RunKeys(SOURCE).export if init == "pretrained" else None
        task = FinetuneTask(method, init, init_from, [], SUITE_PREFIX, ft.example_length, None, ft.seed, lora)
        objective = Generation(task)
        objective.bind(store, tmp_path / "node")
        torch.manual_seed(config.train.seed)
        start, _ = objective.build_model(SoraConfig.from_dict(hf_config), {"zero_optimization": {"stage": 2}})
        losses[init] = tuple(answer_loss(objective, model, store, manifest) for model in (start, exported))
    return losses


@pytest.mark.parametrize("method", ["full", "lora"])
def test_generate_finetune_exports_causal_lms_whose_answer_loss_fell(pretrained_run, tmp_path, method):
    config, store = pretrained_run
    copy_export(store)
    write_suite(store)
    settings = dict(task="generate", generate_suite="continuation", method=method, lora_rank=4, lora_alpha=8)
    tuned = _with(config, from_run=SOURCE, **settings)
    outcome = finetune_on_suite(tuned, store, SUITE_PREFIX, [], quiet=True)
    assert set(outcome) == {"pretrained", "scratch"}
    losses = check_runs(tuned, store, method, tmp_path)
    print(f"{method}: answer-token loss on validation (start, export):", losses)
    for init, (start, end) in losses.items():
        assert end < start, (init, start, end)


def test_generate_finetune_on_the_built_continuation_suite_end_to_end(pretrained_run, tmp_path):
    from pipeline.evaluation.checkpoints import evaluate_run

    config, store = pretrained_run
    raw = config.model_dump(mode="json")
    raw["eval"]["suites"]["enabled"] = ["continuation"]
    raw["eval"]["suites"]["gen_min_test_examples"] = 20  # the small test corpus gives ~70
    raw["eval"]["limit"] = 8  # lm-eval's generate_until on CPU: a few documents per task
    raw["finetune"].update(task="generate", generate_suite="continuation", max_steps=4, eval_interval=2)
    config = RunConfig.model_validate(raw)
    outcome = finetune(config, quiet=True)
    for init in ("pretrained", "scratch"):
        lineage = json.loads(store.read(f"{RunKeys(f'base-ft-generate-full-{init}').export}/sora_export.json"))
        assert lineage["task"] == "generate" and lineage["suite_prefix"].endswith("/continuation")
        assert not outcome[init].get("skipped")
    evaluated = evaluate_run(config)
    for init in ("pretrained", "scratch"):
        results = evaluated[f"ft-generate-full-{init}"]
        assert results.lineage.kind == "generator" and "sora_continuation" in results.results
