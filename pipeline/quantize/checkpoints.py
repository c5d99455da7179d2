"""The quantized checkpoints `sora evaluate` scores beside the pretrained one (with `quantize.enabled`).

Each is a causal LM evaluated on the same suites as the pretrained export, under its method's name
(`runs/<run>/eval/int8/`), so bits/byte and suite scores compare directly. Only the quantized copies
of the evaluated run count (`quantize.run` is that run, or unset); one not made yet is reported missing.
"""

from __future__ import annotations

from typing import Any

from ..config.run import RunConfig
from ..keys import RunKeys
from ..storage import ObjectStore


def quantized_checkpoints(config: RunConfig, store: ObjectStore) -> dict[str, tuple[str, str, Any]]:
    """{method: (checkpoint URI, "causal_lm", None)}, as `evaluate_run` lists its checkpoints."""
    settings = config.quantize
    evaluated = config.finetune.source_run(config.train)
    if not settings.enabled or settings.source_run(config.train) != evaluated:
        return {}
    return {
        method: (store.uri(RunKeys(settings.run_name(evaluated, method)).export), "causal_lm", None)
        for method in settings.methods
    }
