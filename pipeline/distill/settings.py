"""What a distillation run's weights depend on beyond its training-loop config: the teacher export
it learned from (identified by its `sora_export.json`: URI, run, step, validation loss), the
temperature T and the KL weight alpha. The baseline (alpha 0) depends on none of the teacher's.

They are recorded twice: in the run's export lineage (`ExportInfo.distill`) and, before its training
starts, in `runs/<run>/distill.json`, what its checkpoints were trained under. A finished export or
checkpoints trained under other settings are refused with one line naming what changed (a skip would
report another model, a resume would mix two objectives); `--restart` trains the run again."""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import UserError
from ..keys import RunKeys
from ..records import ExportInfo
from ..records.run import RunFile
from ..storage import ObjectStore
from ..train.checkpoint import inventory

FILE = "distill.json"


def teacher_identity(store: ObjectStore, export_key: str, info: ExportInfo) -> dict[str, Any]:
    """The teacher export as its lineage names it: a re-export under the same run name differs."""
    return {"uri": store.uri(export_key), "run": info.run, "step": info.step, "val_loss": info.val_loss}


def run_settings(teacher: dict[str, Any], temperature: float, kl_weight: float) -> dict[str, Any]:
    """The settings the run's weights depend on: with a teacher (alpha > 0) all three, else only alpha."""
    if kl_weight == 0:
        return {"kl_weight": 0.0}
    return {"teacher": teacher, "temperature": temperature, "kl_weight": kl_weight}


def changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`"name: recorded -> current"` for each setting that differs. A setting absent from the record
    (lineage written before it was recorded) is unknown, not changed."""
    known = {name: value for name, value in current.items() if name in recorded}
    return [f"{name}: {recorded[name]!r} -> {value!r}" for name, value in known.items() if recorded[name] != value]


class DistillPin(RunFile):
    """`runs/<run>/distill.json`: the settings the run's checkpoints are being trained under."""

    file: ClassVar[str] = FILE
    settings: dict[str, Any]


def refuse_changed(run: str, what: str, changed: list[str]) -> None:
    """One line naming what changed since `what` was trained, and the way out (`--restart`)."""
    if changed:
        raise UserError(
            f"distill: run {run!r}'s {what} was trained with other distillation settings ({'; '.join(changed)}): "
            "pass --restart to train it again with these, or restore the original settings"
        )


def check_export(run: str, info: ExportInfo, current: dict[str, Any]) -> None:
    """A finished export is skipped only when it was distilled with the current settings."""
    refuse_changed(run, "finished export", changes(info.distill or {}, current))


def check_checkpoints(store: ObjectStore, run: str, current: dict[str, Any]) -> None:
    """The run's committed checkpoints are resumed only under the settings they were trained with."""
    pin = DistillPin.load(store, run)
    found = inventory(store, RunKeys(run))
    if pin is not None and (found.sound or found.broken):
        refuse_changed(run, "checkpoints", changes(pin.settings, current))
