"""The student's architecture: a named preset, or by default the teacher's architecture halved, with
`distill.student_overrides` on top; checked against the teacher before any worker starts (same
vocabulary and token ids, strictly fewer parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sora import PRESETS, SoraConfig, count_parameters

from ..config.distill import DistillConfig
from ..errors import UserError

# What decides a model's tensors (the TrainConfig's `model_overrides` record these against the preset).
ARCHITECTURE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "norm",
    "norm_eps",
    "adn_rank",
    "rope_theta",
    "tie_word_embeddings",
    "max_position_embeddings",
)
# Shared with the teacher: the student predicts the same tokens, so the KL compares like with like.
TOKENS = ("vocab_size", "eos_token_id", "bos_token_id", "pad_token_id")


@dataclass(frozen=True)
class Student:
    config: SoraConfig
    preset: str  # the TrainConfig's `model` ...
    overrides: dict[str, Any]  # ... and `model_overrides`: together the student's architecture


def halved(teacher: SoraConfig) -> dict[str, Any]:
    """The teacher's architecture at half its depth and width: half the layers, attention heads
    (same head dimension, so RoPE still fits), key/value heads, hidden and MLP sizes."""
    heads = max(1, teacher.num_attention_heads // 2)
    kv_heads = max(1, teacher.num_key_value_heads // 2)
    if heads % kv_heads:
        kv_heads = 1
    return {
        "num_hidden_layers": max(1, teacher.num_hidden_layers // 2),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_size": heads * teacher.head_dim,
        "intermediate_size": max(1, teacher.intermediate_size // 2),
    }


def resolve_student(distill: DistillConfig, teacher: SoraConfig, teacher_preset: str, seq_len: int) -> Student:
    """The student of `distill` for `teacher` (its export's config); UserError when it cannot be distilled."""
    overrides = dict(distill.student_overrides)
    if "vocab_size" in overrides and overrides["vocab_size"] != teacher.vocab_size:
        raise UserError(
            f"distill.student_overrides.vocab_size {overrides['vocab_size']} != the teacher's {teacher.vocab_size}: "
            "the KL compares next-token distributions over one vocabulary"
        )
    tokens = {name: getattr(teacher, name) for name in TOKENS}
    preset = distill.student or teacher_preset
    try:
        if distill.student is not None:
            config = SoraConfig.from_preset(preset, **{**overrides, **tokens})
        else:
            base = {name: getattr(teacher, name) for name in ARCHITECTURE}
            config = SoraConfig(**{**base, **halved(teacher), **overrides, **tokens})
    except (TypeError, ValueError) as error:
        raise UserError(f"distill: the student's architecture is invalid: {error}") from None
    config.max_position_embeddings = max(config.max_position_embeddings, seq_len)
    student_params, teacher_params = count_parameters(config)["total"], count_parameters(teacher)["total"]
    if student_params >= teacher_params:
        raise UserError(
            f"distill: the student ({distill.student_label()}, {student_params:,} parameters) is not smaller than "
            f"the teacher ({teacher_params:,}); choose a smaller distill.student or student_overrides"
        )
    reference = SoraConfig.from_preset(preset) if preset in PRESETS else SoraConfig()
    recorded = {n: getattr(config, n) for n in ARCHITECTURE if getattr(config, n) != getattr(reference, n)}
    return Student(config, preset, recorded)
