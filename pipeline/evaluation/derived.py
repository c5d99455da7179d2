"""The checkpoints derived from the pretrained export that `sora evaluate` scores beside it, on the
same suites, when their sections are enabled (causal LMs all):

    distilled          <teacher>-distill-<student>             the student trained with the teacher's KL
    distill-baseline   <teacher>-distill-<student>-baseline    the same student, same tokens, no teacher
    int8, int4         <run>-<method>                          weight-only quantized copies

Names come from the config alone (a checkpoint not made yet is reported missing by `evaluate_run`);
only the quantized copies of the evaluated run count (`quantize.run` is that run, or unset).
"""

from __future__ import annotations

from typing import Any

from ..config.run import RunConfig
from ..keys import RunKeys
from ..storage import ObjectStore

DISTILL_EVAL_NAMES = {"distilled": "distilled", "baseline": "distill-baseline"}  # run kind -> evaluation name


def distill_checkpoints(config: RunConfig, store: ObjectStore) -> dict[str, tuple[str, str, Any]]:
    """{evaluation name: (export URI, "causal_lm", None)} when distillation is enabled, else {}."""
    if not config.distill.enabled:
        return {}
    runs = config.distill.run_names(config.train)
    return {
        name: (store.uri(RunKeys(runs[kind]).export), "causal_lm", None) for kind, name in DISTILL_EVAL_NAMES.items()
    }


def quantized_checkpoints(config: RunConfig, store: ObjectStore) -> dict[str, tuple[str, str, Any]]:
    """{method: (checkpoint URI, "causal_lm", None)} when quantization is enabled, else {}."""
    settings = config.quantize
    evaluated = config.finetune.source_run(config.train)
    if not settings.enabled or settings.source_run(config.train) != evaluated:
        return {}
    return {
        method: (store.uri(RunKeys(settings.run_name(evaluated, method)).export), "causal_lm", None)
        for method in settings.methods
    }
