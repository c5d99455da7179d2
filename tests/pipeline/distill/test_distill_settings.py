"""What a distillation run was trained under (pipeline/distill/settings.py): a finished export or
checkpoints of other teacher, temperature or KL weight are refused with one line naming the change
and `--restart`; the baseline depends on none of the teacher's settings. The teacher loads straight
onto the worker's device, frozen (pipeline/distill/objective.py `load_teacher`)."""

import pytest
import torch

from pipeline.distill.objective import load_teacher, teacher_dtype
from pipeline.distill.settings import DistillPin, check_checkpoints, check_export, run_settings
from pipeline.errors import UserError
from pipeline.keys import RunKeys
from pipeline.records import ExportInfo
from pipeline.records.checkpoint import STATE
from pipeline.storage import open_store
from pipeline.train.checkpoint import COMMITTED

TEACHER = {"uri": "file:///s/runs/base/hf", "run": "base", "step": 12, "val_loss": 4.0}
INFO = dict(step=6, dataset="d", dataset_version=1, run="base-distill-half")


def test_a_finished_export_of_other_settings_is_refused():
    settings = run_settings(TEACHER, 2.0, 0.5)
    check_export("s", ExportInfo(**INFO, distill={"teacher_export": "runs/base/hf", **settings}), settings)
    reexported = {**TEACHER, "step": 24, "val_loss": 3.5}
    with pytest.raises(UserError, match=r"teacher: .*'step': 12.* -> .*'step': 24.*--restart"):
        check_export("s", ExportInfo(**INFO, distill=settings), run_settings(reexported, 2.0, 0.5))
    with pytest.raises(UserError, match=r"temperature: 2.0 -> 4.0; kl_weight: 0.5 -> 0.7"):
        check_export("s", ExportInfo(**INFO, distill=settings), run_settings(TEACHER, 4.0, 0.7))
    # The baseline: no teacher, so another teacher or temperature changes nothing.
    baseline = {"teacher_export": "runs/base/hf", "teacher": TEACHER, "temperature": 2.0, "kl_weight": 0.0}
    check_export("b", ExportInfo(**INFO, distill=baseline), run_settings(reexported, 4.0, 0.0))
    # An export from before the teacher's identity was recorded: what it names is still compared.
    legacy = {"teacher_export": "runs/base/hf", "temperature": 2.0, "kl_weight": 0.5}
    check_export("s", ExportInfo(**INFO, distill=legacy), run_settings(reexported, 2.0, 0.5))


def test_checkpoints_of_other_settings_are_refused(tmp_path):
    store = open_store(f"file://{tmp_path}")
    old = run_settings(TEACHER, 2.0, 0.5)
    new = run_settings(TEACHER, 2.0, 0.25)
    DistillPin(settings=old).write(store, "s")
    check_checkpoints(store, "s", new)  # no checkpoint yet: nothing would be resumed
    keys = RunKeys("s")
    store.write(keys.checkpoint_file(3, STATE), b"{}")  # a committed checkpoint of step 3 (its listing)
    store.write(f"{keys.checkpoint(3)}/{COMMITTED}", b"")
    with pytest.raises(UserError, match=r"checkpoints was trained with other .*kl_weight: 0.5 -> 0.25.*--restart"):
        check_checkpoints(store, "s", new)
    check_checkpoints(store, "s", old)


def test_the_teacher_loads_frozen_on_the_device_in_the_training_precision(tmp_path):
    from sora import SoraConfig, SoraForCausalLM

    SoraForCausalLM(SoraConfig.from_preset("tiny")).save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path, torch.device("cpu"), "bf16")
    params = list(teacher.parameters())
    assert not teacher.training and not teacher.config.use_cache
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 and not p.requires_grad for p in params)
    assert teacher_dtype("auto", torch.device("cpu")) == torch.float32 == teacher_dtype("fp32", torch.device("cpu"))
