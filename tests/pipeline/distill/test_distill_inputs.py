"""`sora distill` refuses, in one line and before anything starts, a config that does not enable it
and a teacher run without a finished export."""

import pytest

from pipeline.config.run import RunConfig
from pipeline.distill.launch import distill
from pipeline.errors import UserError


def _config(tmp_path, **distill_fields) -> RunConfig:
    return RunConfig.model_validate(
        {"storage": {"root": str(tmp_path / "store")}, "train": {"run": "base"}, "distill": distill_fields}
    )


def test_disabled_distillation_is_refused(tmp_path):
    with pytest.raises(UserError, match="distill.enabled is false"):
        distill(_config(tmp_path))


def test_teacher_without_an_export_is_refused(tmp_path):
    with pytest.raises(UserError, match="teacher run 'other' has no complete export"):
        distill(_config(tmp_path, enabled=True, teacher_run="other"))
