"""Fixtures for pretrain tests: one small published dataset shared by every run of the session."""

import pytest
from datagen import data_config, make_corpus


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    ensure_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory, ray_session):
    """A published dataset 'test' (generated corpus, seq_len 32, vocab 400) under a local root."""
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter

    base = tmp_path_factory.mktemp("train-data")
    make_corpus(base / "corpus")
    config = data_config(f"file://{base}/root", str(base / "corpus"))
    preprocess(config, Reporter(quiet=True))
    return config
