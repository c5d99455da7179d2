"""Fixtures for data-stage tests."""

import pytest
from datagen import make_corpus


@pytest.fixture
def corpus(tmp_path):
    """A generated jsonl corpus directory with planted duplicates (see datagen.make_corpus)."""
    directory = tmp_path / "corpus"
    return {"dir": directory, "docs": make_corpus(directory)}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    ensure_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()
