"""The student's architecture and the distill section: halved by default, checked against the
teacher (one vocabulary, strictly smaller), run names, and bad settings refused in one line."""

import pytest
from pydantic import ValidationError

from pipeline.config.distill import DistillConfig
from pipeline.config.run import RunConfig
from pipeline.distill.student import resolve_student
from pipeline.errors import UserError
from sora import SoraConfig, count_parameters

TEACHER = SoraConfig.from_preset(
    "tiny", vocab_size=400, hidden_size=64, intermediate_size=128, eos_token_id=1, bos_token_id=1, pad_token_id=0
)


def test_default_student_is_the_teacher_halved_with_its_vocabulary():
    student = resolve_student(DistillConfig(), TEACHER, "tiny", seq_len=32)
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (2, 32, 64)
    assert config.head_dim == TEACHER.head_dim and config.num_attention_heads == 2
    assert (config.vocab_size, config.eos_token_id, config.pad_token_id) == (400, 1, 0)
    assert count_parameters(config)["total"] < count_parameters(TEACHER)["total"] / 2
    # The TrainConfig records it as the preset plus what differs from it.
    rebuilt = SoraConfig.from_preset(student.preset, **student.overrides, vocab_size=400)
    assert rebuilt.num_hidden_layers == 2 and rebuilt.hidden_size == 32 and rebuilt.intermediate_size == 64


def test_student_overrides_apply_on_the_halved_teacher_or_a_preset():
    deeper = resolve_student(DistillConfig(student_overrides={"num_hidden_layers": 3}), TEACHER, "tiny", 32)
    assert (deeper.config.num_hidden_layers, deeper.config.hidden_size) == (3, 32)
    preset = resolve_student(DistillConfig(student="tiny", student_overrides={"hidden_size": 32}), TEACHER, "tiny", 32)
    assert preset.config.hidden_size == 32 and preset.config.vocab_size == 400


def test_a_student_not_smaller_than_the_teacher_is_refused():
    with pytest.raises(UserError, match="not smaller than the teacher"):
        resolve_student(DistillConfig(student="tiny"), TEACHER, "tiny", 32)  # tiny is hidden 128 > 64
    same = {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4}
    same["intermediate_size"] = 128
    with pytest.raises(UserError, match="not smaller than the teacher"):
        resolve_student(DistillConfig(student_overrides=same), TEACHER, "tiny", 32)


def test_a_student_of_another_vocabulary_or_shape_is_refused():
    with pytest.raises(UserError, match="vocab_size 4096 != the teacher's 400"):
        resolve_student(DistillConfig(student_overrides={"vocab_size": 4096}), TEACHER, "tiny", 32)
    with pytest.raises(UserError, match="architecture is invalid"):
        resolve_student(DistillConfig(student_overrides={"num_attention_heads": 3}), TEACHER, "tiny", 32)


def test_section_settings_and_run_names():
    config = RunConfig.model_validate({"train": {"run": "base"}, "distill": {"enabled": True}})
    assert config.distill.run_names(config.train) == {
        "distilled": "base-distill-half",
        "baseline": "base-distill-half-baseline",
    }
    other = DistillConfig(teacher_run="big", student="tiny", student_overrides={"hidden_size": 32})
    name = other.run_name(config.train, "distilled")
    assert name.startswith("big-distill-tiny-") and name != DistillConfig(student="tiny").run_name("big", "distilled")
    for bad in ({"kl_weight": 1.5}, {"kl_weight": -0.1}, {"temperature": 0}, {"student": "huge"}):
        with pytest.raises(ValidationError):
            DistillConfig.model_validate(bad)


def test_both_runs_share_the_loop_settings_and_the_teachers_data():
    config = RunConfig.model_validate({"train": {"run": "base"}, "distill": {"enabled": True, "max_steps": 30}})
    data = {"dataset": "labelled", "dataset_version": 3}
    kinds = ("distilled", "baseline")
    runs = [config.distill.train_config(config.train, kind, data, "tiny", {"hidden_size": 32}) for kind in kinds]
    assert [r.run for r in runs] == ["base-distill-half", "base-distill-half-baseline"]
    for train in runs:
        assert (train.max_steps, train.seed, train.dataset_version, train.strategy) == (30, 1234, 3, "zero3")
        assert train.model_overrides == {"hidden_size": 32}
