"""Fixtures for the suites and evaluation tests: a labelled dataset built by the real data stage
(Ray) for the disjointness test, and the same corpus published in-process (seconds) for the
lm-eval tests."""

import pytest
from evalgen import labelled_config, labelled_documents, publish_in_process


@pytest.fixture(scope="session")
def labelled_dataset(tmp_path_factory):
    """A dataset built by the data stage (real Ray) from a labelled jsonl corpus: (config, store, manifest, docs)."""
    import ray

    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.ray_runtime import ensure_ray
    from pipeline.storage import open_store

    base = tmp_path_factory.mktemp("labelled")
    config = labelled_config(base)
    docs = labelled_documents()
    started = ray.is_initialized()
    ensure_ray(config.ray)
    manifest = preprocess(config, Reporter(quiet=True))
    if not started:
        ray.shutdown()
    return config, open_store(config.storage.root), manifest, docs


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """The labelled corpus published in-process (no Ray): (config, store, manifest, docs)."""
    from pipeline.storage import open_store

    base = tmp_path_factory.mktemp("small")
    docs = labelled_documents()
    config = labelled_config(base)  # the corpus file it writes is not read: published in-process
    manifest = publish_in_process(config.storage.root, docs, config)
    return config, open_store(config.storage.root), manifest, docs
