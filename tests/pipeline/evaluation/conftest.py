"""Fixtures for evaluation tests: a labelled dataset built by the real data stage (Ray) for the
disjointness test, and the same corpus published in-process (seconds) for the lm-eval tests."""

import json

import pytest
from evalgen import labelled_documents, publish_in_process, suite_settings

from pipeline.config.run import RunConfig


@pytest.fixture(scope="session")
def labelled_dataset(tmp_path_factory):
    """A dataset built by the data stage (real Ray) from a labelled jsonl corpus: (config, store, manifest, docs)."""
    import ray

    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.ray_runtime import ensure_ray
    from pipeline.storage import open_store

    base = tmp_path_factory.mktemp("labelled")
    docs = labelled_documents()
    corpus = base / "corpus" / "docs.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    config = labelled_config(base, corpus)
    started = ray.is_initialized()
    ensure_ray(config.ray)
    manifest = preprocess(config, Reporter(quiet=True))
    if not started:
        ray.shutdown()
    return config, open_store(config.storage.root), manifest, docs


def labelled_config(base, corpus) -> RunConfig:
    return RunConfig.model_validate(
        {
            "storage": {"root": str(base / "store")},
            "ray": {"num_cpus": 2},
            "data": {
                "name": "labelled",
                "sources": [{"kind": "jsonl", "uri": str(corpus), "label_field": "topic"}],
                "seq_len": 32,
                "tokenizer": {"vocab_size": 400, "sample_bytes": 1 << 20},
                "split": {"val_fraction": 0.1, "heldout_fraction": 0.4},
                "filters": {"max_doc_bytes": 20000, "min_chars": 8},
                "dedup": {"near": False},
                "shard_bytes": 1 << 16,
            },
            "eval": {"suites": suite_settings()},
        }
    )


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """The labelled corpus published in-process (no Ray): (config, store, manifest, docs)."""
    from pipeline.storage import open_store

    base = tmp_path_factory.mktemp("small")
    docs = labelled_documents()
    config = labelled_config(base, base / "unused.jsonl")
    manifest = publish_in_process(config.storage.root, docs, config)
    return config, open_store(config.storage.root), manifest, docs
