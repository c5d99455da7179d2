"""lm-evaluation-harness integration for Sora checkpoints.

Sora is not a model type transformers knows. Its exports carry their modeling code (`auto_map`), so
`lm_eval --model hf --model_args pretrained=...,trust_remote_code=True` loads them anywhere (and an
rmsnorm model's `hf-llama/` export needs nothing); in-process, importing `sora` registers the model
with the Auto classes, and this module registers an lm-eval model named `sora` that is the stock
`HFLM` with that registration done (the package's code, not the copy in the checkpoint). Everything
`hf` accepts (`pretrained=`, `dtype=`, `batch_size`, `device`) works unchanged:

    lm_eval --include_path my_tasks --model sora --model_args pretrained=runs/x/hf --tasks my_task
    (with `import pipeline.evaluation.harness` done first, e.g. through `sora eval`)

Importing this module also registers `sora-classifier` (classifier_lm.py), the lm-eval model of a
fine-tuned `SoraForSequenceClassification`. `run_lm_eval` is what the evaluation stage calls.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import lm_eval.evaluator
from lm_eval import simple_evaluate
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

import sora  # noqa: F401  (registers SoraConfig / SoraForCausalLM with the Auto classes)

from ..suites import lm_eval_metrics  # noqa: F401  (registers the generative suites' metrics)
from . import classifier_lm  # noqa: F401  (registers the lm-eval model `sora-classifier`)


@cache
def sora_revision() -> str:
    """The commit of the Sora source that evaluates (or its package version outside a checkout).

    lm-eval records `git describe` of the working directory as `git_hash`, which is not the code
    that ran when a user evaluates from their own directory, and prints git's "fatal: not a git
    repository" there; the results record this revision instead.
    """
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=source, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"sora-pipeline {version('sora-pipeline')}"
    except PackageNotFoundError:
        return "unknown"


lm_eval.evaluator.get_git_commit_hash = sora_revision


@register_model("sora")
class SoraLM(HFLM):
    """`HFLM` for Sora checkpoints (exported `runs/<run>/hf` directories)."""


def evaluate_checkpoint(
    checkpoint: str | Path,
    tasks: list[str],
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Score an HF-format Sora checkpoint on lm-eval tasks; returns lm-eval's results dict."""
    manager = task_manager([include_path] if include_path else [], defaults=True)
    return run_lm_eval(checkpoint, "sora", tasks, manager, batch_size, device, limit, num_fewshot)


def task_manager(include_paths: list[str | Path], defaults: bool = True) -> TaskManager:
    """lm-eval's task index over `include_paths` (+ lm-eval's own tasks when `defaults`; indexing
    them costs seconds, so callers that need only local task folders leave them out)."""
    return TaskManager(include_path=[str(p) for p in include_paths] or None, include_defaults=defaults)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def eval_dtype(device: str) -> str:
    """The dtype a model is scored in on `device`: bfloat16 on a GPU that supports it (the dtype
    models are trained in; float16 could overflow a bf16-trained model), float32 on CPU and on
    older GPUs."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def run_lm_eval(
    checkpoint: str | Path,
    model: str,
    tasks: list[str],
    task_manager: TaskManager,
    batch_size: int = 8,
    device: str = "auto",
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """`simple_evaluate` of a local HF checkpoint with lm-eval model `model` (`sora` or
    `sora-classifier`) on `device` in `eval_dtype(device)`, per-document samples logged; returns
    lm-eval's results dict."""
    device = resolve_device(device)
    model_args: dict[str, Any] = {"pretrained": str(checkpoint), "dtype": eval_dtype(device)}
    results = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=task_manager,
        batch_size=batch_size,
        device=device,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=True,
    )
    if results is None:  # only non-zero ranks of a distributed lm-eval run return None
        raise RuntimeError("lm-eval returned no results")
    return results
