"""Driver side of `sora distill`: the teacher's export, the student's architecture, then two runs of
the training job with one token budget.

Both runs use `run_training` (lease, Ray Train, DeepSpeed, checkpoints, resume) on the dataset
version the teacher was trained on (from its `sora_export.json`), with the same seed and so the
same data order; they differ only in the loss: `<teacher>-distill-<student>` mixes in the KL to the
frozen teacher, `<teacher>-distill-<student>-baseline` is the same student trained without it. A run
whose export already holds its last step is skipped, so re-running does no work; when its teacher
export, temperature or KL weight changed since (settings.py), neither that export nor its
checkpoints are used: one line asks for `--restart`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sora import SoraConfig

from ..config.distill import KINDS
from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys
from ..pretrain.mixture import pin_sources
from ..records import ExportInfo, read_dataset
from ..records.export import load_export
from ..storage import ObjectStore, open_store
from ..train.launch import finished_export, run_training
from ..train.metrics import read_rows
from .objective import Distillation
from .settings import DistillPin, check_checkpoints, check_export, run_settings, teacher_identity
from .student import Student, resolve_student


def teacher_data(info: ExportInfo) -> dict[str, Any]:
    """The teacher's pinned dataset (or mixture) as TrainConfig fields: the student reads the same."""
    if info.data:
        return {"data": [{"dataset": s.dataset, "version": s.dataset_version, "weight": s.weight} for s in info.data]}
    return {"dataset": info.dataset, "dataset_version": info.dataset_version}


def plan_student(config: RunConfig, store: ObjectStore) -> tuple[str, ExportInfo, Student]:
    """(teacher export key, its lineage, the student): everything checked before a run starts."""
    distill = config.distill
    teacher_run = distill.teacher(config.train)
    if not store.exists(f"{RunKeys(teacher_run).export}/config.json"):
        raise UserError(
            f"distill: teacher run {teacher_run!r} has no complete export at {store.uri(RunKeys(teacher_run).export)}: "
            "run `sora pretrain` to its last step first, or set distill.teacher_run to a run that has one"
        )
    export_key, info, hf_config = load_export(store, teacher_run)
    teacher = SoraConfig.from_dict(hf_config)
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    if teacher.vocab_size != manifest.tokenizer.vocab_size:
        raise UserError(
            f"teacher {info.run!r} has vocab_size {teacher.vocab_size}, its dataset's tokenizer "
            f"{manifest.tokenizer.vocab_size}: its export does not match the data it names"
        )
    return export_key, info, resolve_student(distill, teacher, config.train.model, manifest.seq_len)


def check_distill(config: RunConfig) -> None:
    """Before any training: when the teacher is this config's own pretrain run (what `sora run`
    distills), its architecture is known from `train`, so a student that cannot be distilled from it
    is refused now rather than after pretraining."""
    if config.distill.teacher(config.train) != config.train.run:
        return  # another run's export: checked by `plan_student` when it is read
    teacher = SoraConfig.from_preset(config.train.model, **config.train.model_overrides)
    resolve_student(config.distill, teacher, config.train.model, config.data.seq_len)


def distill(config: RunConfig, quiet: bool = False, restart: bool = False) -> dict[str, Any]:
    """Train the distilled student and its baseline; returns per-kind outcome and export URI."""
    if not config.distill.enabled:
        raise UserError("distill.enabled is false: set it to true (e.g. --set distill.enabled=true) to distill")
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    export_key, info, student = plan_student(config, store)
    distill_config = config.distill
    teacher = teacher_identity(store, export_key, info)
    outcome: dict[str, Any] = {}
    for kind in KINDS:
        data = teacher_data(info)
        train = distill_config.train_config(config.train, kind, data, student.preset, student.overrides)
        run_config = config.model_copy(update={"train": train})
        keys = RunKeys(train.run)
        kl_weight = distill_config.kl_weight if kind == "distilled" else 0.0
        settings = run_settings(teacher, distill_config.temperature, kl_weight)
        if not restart:
            finished = finished_export(store, keys, train.max_steps)
            if finished:
                check_export(train.run, finished, settings)
                rows = read_rows(store, keys.metrics)
                outcome[kind] = {"final": rows[-1] if rows else {}, "export": store.uri(keys.export), "skipped": True}
                continue
            check_checkpoints(store, train.run, settings)
        sources = pin_sources(store, run_config, restart)
        objective = replace(
            Distillation.for_run(train, sources),
            teacher_export=export_key,
            temperature=distill_config.temperature,
            kl_weight=kl_weight,
            teacher_identity=teacher,
            precision=train.precision,
        )
        DistillPin(settings=settings).write(store, train.run)  # what its checkpoints will be trained under
        outcome[kind] = run_training(
            run_config, store, sources[0][0], student.config, "distill", objective, quiet=quiet, restart=restart
        )
    return outcome
