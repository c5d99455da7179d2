"""DeepSpeed configs: `ds_configs/<strategy>.json` (shipped in `pipeline/resources/`) with every "auto"
field filled from the run config.

Users may edit the JSON files (bucket sizes, offload details...); the fields that must agree with
the run config (batch sizes, clipping, precision, ZeRO stage, offload device) are "auto" there and
filled here, so the two can never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.loop import BatchSplit
from ..config.train import TrainConfig
from ..resources import DS_CONFIGS

DS_CONFIG_DIR = DS_CONFIGS


def _fill(node: Any, values: dict[str, Any], path: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise KeyError(f"DeepSpeed config field {path} is 'auto' but the run config has no value for it")
        return values[path]
    return node


def deepspeed_config(
    train: TrainConfig,
    bf16: bool,
    load_universal: bool = False,
    config_dir: Path = DS_CONFIG_DIR,
    split: BatchSplit | None = None,
) -> dict[str, Any]:
    """The filled config; `split` is the batch cut for the workers Ray Train started (default: the
    largest worker count)."""
    split = split or train.split(train.max_workers)
    name = "pipeline" if train.strategy == "pipeline" else train.strategy
    template = json.loads((config_dir / f"{name}.json").read_text())
    offload = "cpu" if train.offload else "none"
    values = {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": split.micro_batch,
        "gradient_accumulation_steps": split.grad_accum,
        "gradient_clipping": train.grad_clip,
        "bf16.enabled": bf16,
        "zero_optimization.stage": train.effective_zero_stage,
        "zero_optimization.offload_optimizer.device": offload,
        "zero_optimization.offload_param.device": offload,
        # Sora checkpoints its blocks itself (`train.activation_checkpointing`, the same blocks under
        # every strategy, see engine.py); DeepSpeed's interval would checkpoint chunks of a stage's
        # layers on top of that, which `sora plan` does not account for.
        "pipeline.activation_checkpoint_interval": 0,
    }
    config = _fill(template, values)
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    return config
