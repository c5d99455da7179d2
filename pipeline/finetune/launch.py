"""Driver side of `sora finetune`: the suite (classify, or a generative one for `task: generate`),
then two fine-tune runs with one budget.

Both runs use the training job's `run_training` (lease, Ray Train, DeepSpeed, checkpoints,
resume); they differ only in where the weights start: the pretrain run's HF export, or random
initialization of the same architecture with the same seed. A run that already finished (its
export records the last step, or early stopping) on the same train and validation files is
skipped, so re-running does no work (`suite_checks.py`).

The driver never builds suites: missing ones are built in a Ray task (`ensure_suites`, as for
evaluation; at hundreds of GB of held-out text that takes hours) and the driver reads the index.
Before training it refuses a validation split smaller than one validation batch and prints the
share of train examples that `finetune.max_length` cuts.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from sora import SoraConfig

from ..config.evaluate import EvalConfig
from ..config.finetune import INITS, FinetuneConfig
from ..config.run import RunConfig
from ..config.train import TrainConfig
from ..errors import UserError
from ..keys import RunKeys
from ..records import read_dataset
from ..records.export import load_export
from ..storage import ObjectStore, open_store
from ..suites.build import TASK_NAMES
from ..suites.ensure import ensure_suites
from ..train.launch import finished_export, pin_dataset, run_training
from .generation import Generation
from .objective import Classification
from .suite_checks import check_validation_size, same_training_data, train_truncation
from .task import FinetuneTask

OBJECTIVES = {"classify": Classification, "generate": Generation}


def check_suite_enabled(ft: FinetuneConfig, eval_config: EvalConfig) -> None:
    """The suite the fine-tune trains on must be built: a one-line UserError before any work."""
    if ft.suite not in eval_config.suites.enabled:
        raise UserError(
            f"fine-tuning (finetune.task: {ft.task}) needs the {ft.suite} suite: add {ft.suite} to eval.suites.enabled"
        )


def finetune(config: RunConfig, quiet: bool = False, restart: bool = False) -> dict[str, Any]:
    """Fine-tune from the pretrained export and from scratch; returns per-init outcome and export URI."""
    ft = config.finetune
    check_suite_enabled(ft, config.eval)
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    _, info, _ = load_export(store, ft.source_run(config.train))
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    suites = ensure_suites(config, store, manifest)  # built in a Ray task when missing
    suite = suites.tasks.get(TASK_NAMES[ft.suite])
    if suite is None:
        raise UserError(f"the suites at {suites.uri} have no {ft.suite} suite; fine-tuning needs it")
    classes = list(suite.classes or ())
    return finetune_on_suite(config, store, f"{suites.prefix}/{ft.suite}", classes, quiet=quiet, restart=restart)


def finetune_on_suite(
    config: RunConfig,
    store: ObjectStore,
    suite_prefix: str,
    classes: list[str],
    quiet: bool = False,
    restart: bool = False,
) -> dict[str, Any]:
    """The two fine-tune runs (pretrained, scratch) of `config.finetune` on the suite files under
    `suite_prefix` (`<suites folder>/<suite>`: `train.jsonl`, `validation.jsonl`; `classes`: the
    classify suite's class names)."""
    ft = config.finetune
    export_key, info, hf_config = load_export(store, ft.source_run(config.train))
    model_config = SoraConfig.from_dict(hf_config)
    outcome: dict[str, Any] = {}
    to_train: dict[str, TrainConfig] = {}  # init -> its TrainConfig, for the runs not finished yet
    for init in INITS:
        train = ft.train_config(config.train, init, info.dataset, info.dataset_version)
        keys = RunKeys(train.run)
        done = finished_export(store, keys, train.max_steps)
        if not done:
            to_train[init] = train
            continue
        if done.suite_prefix and not same_training_data(store, done.suite_prefix, suite_prefix):
            raise UserError(
                f"fine-tune run {train.run!r} was trained on {store.uri(done.suite_prefix)}, but eval.suites now "
                f"builds {store.uri(suite_prefix)}: restore the eval.suites (and finetune.generate_suite) settings "
                "it was trained with, or "
                f"delete {store.uri(keys.prefix)} (and its eval results) to fine-tune again on the new suite"
            )
        outcome[init] = {"export": store.uri(keys.export), "skipped": True}
    if not to_train:
        return outcome
    check_validation_size(store, suite_prefix, ft)
    tasks = {
        init: FinetuneTask(
            method=ft.method,
            init=init,
            init_from=export_key if init == "pretrained" else None,
            classes=classes,
            suite_prefix=suite_prefix,
            max_length=ft.example_length,
            patience=ft.patience,
            seed=ft.seed,
            lora={"rank": ft.lora_rank, "alpha": ft.lora_alpha, "dropout": ft.lora_dropout, "targets": ft.lora_targets},
        )
        for init in to_train
    }
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    cut, examples = train_truncation(OBJECTIVES[ft.task](next(iter(tasks.values()))), store, manifest)
    Console(stderr=True, quiet=quiet).print(
        f"finetune on {ft.suite}: {cut} of {examples} train examples ({cut / examples:.1%}) are longer than "
        f"{ft.example_length} tokens (finetune.max_length) and are cut"
    )
    for init, train in to_train.items():
        run_config = config.model_copy(update={"train": train})
        pinned = pin_dataset(store, run_config)
        objective = OBJECTIVES[ft.task](tasks[init])
        result = run_training(
            run_config, store, pinned, model_config, "finetune", objective, quiet=quiet, restart=restart
        )
        outcome[init] = {**result, "train_truncated": cut / examples}
    return outcome
