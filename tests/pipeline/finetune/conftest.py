"""Fixtures for fine-tune tests: a labelled dataset (real data stage) and a pretrained tiny run."""

import pytest
from evalgen import finetune_settings, labelled_config
from traingen import train_config

from pipeline.config.run import RunConfig


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """(config, store): a labelled dataset and a tiny model pretrained on it for 12 steps (run 'base')."""
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.pretrain.launch import pretrain
    from pipeline.ray_runtime import ensure_ray
    from pipeline.storage import open_store

    data = labelled_config(tmp_path_factory.mktemp("finetune"))
    ensure_ray(data.ray)
    preprocess(data, Reporter(quiet=True))
    config = train_config(data, "base", max_steps=12, checkpoint_interval=12)
    raw = config.model_dump(mode="json")
    raw["finetune"] = finetune_settings()
    config = RunConfig.model_validate(raw)
    pretrain(config, quiet=True)
    return config, open_store(config.storage.root)
