"""Fixtures for distillation tests: a labelled dataset (real data stage) and a tiny teacher pretrained
on it (run 'base', 1 worker), with a distill section sized for seconds per run."""

import pytest
from evalgen import labelled_config
from traingen import train_config

from pipeline.config.run import RunConfig


def distill_settings(**overrides) -> dict:
    """One worker, ZeRO-3 (the default strategy), 6 steps: validation and checkpoints every 3."""
    return {
        "enabled": True,
        "workers": 1,
        "global_batch": 8,
        "micro_batch": 4,
        "max_steps": 6,
        "eval_interval": 3,
        "eval_batches": 1,
        "checkpoint_interval": 3,
        "warmup_steps": 1,
        "lr": 3e-3,
        "min_lr": 3e-4,
        **overrides,
    }


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """(config, store): a labelled dataset and a tiny teacher pretrained on it for 12 steps (run 'base')."""
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.pretrain.launch import pretrain
    from pipeline.ray_runtime import ensure_ray
    from pipeline.storage import open_store

    data = labelled_config(tmp_path_factory.mktemp("distill"))
    ensure_ray(data.ray)
    preprocess(data, Reporter(quiet=True))
    config = train_config(data, "base", max_steps=12, checkpoint_interval=12, workers=1, micro_batch=4)
    raw = config.model_dump(mode="json")
    raw["distill"] = distill_settings()
    config = RunConfig.model_validate(raw)
    pretrain(config, quiet=True)
    return config, open_store(config.storage.root)
