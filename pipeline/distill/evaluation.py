"""Which distillation exports `sora evaluate` scores next to the teacher: both are causal LMs, evaluated
on the same suites as `pretrained` (the teacher when distill.teacher_run is the pretrain run).

    distilled          <teacher>-distill-<student>             the student trained with the teacher's KL
    distill-baseline   <teacher>-distill-<student>-baseline    the same student, same tokens, no teacher
"""

from __future__ import annotations

from ..config.run import RunConfig
from ..keys import RunKeys
from ..storage import ObjectStore

EVAL_NAMES = {"distilled": "distilled", "baseline": "distill-baseline"}  # run kind -> evaluation name


def distill_checkpoints(config: RunConfig, store: ObjectStore) -> dict[str, tuple[str, str, None]]:
    """{evaluation name: (export URI, "causal_lm", None)} when distillation is enabled, else {}
    (the shape of `evaluate_run`'s checkpoints; a missing export is reported as missing there)."""
    if not config.distill.enabled:
        return {}
    runs = config.distill.run_names(config.train)
    return {name: (store.uri(RunKeys(runs[kind]).export), "causal_lm", None) for kind, name in EVAL_NAMES.items()}
