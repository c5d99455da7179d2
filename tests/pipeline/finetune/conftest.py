"""Fixtures for fine-tune tests: a labelled dataset (real data stage) and a pretrained tiny run."""

import json

import pytest
from evalgen import labelled_documents, suite_settings
from traingen import train_config

from pipeline.config.run import RunConfig


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """(config, store): a labelled dataset and a tiny model pretrained on it for 12 steps (run 'base')."""
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.ray_runtime import ensure_ray
    from pipeline.storage import open_store
    from pipeline.train.launch import pretrain

    base = tmp_path_factory.mktemp("finetune")
    corpus = base / "corpus" / "docs.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps(d) + "\n" for d in labelled_documents()))
    data = RunConfig.model_validate(
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
        }
    )
    ensure_ray(data.ray)
    preprocess(data, Reporter(quiet=True))
    config = train_config(data, "base", max_steps=12, checkpoint_interval=12)
    raw = config.model_dump(mode="json")
    raw["eval"] = {"suites": suite_settings(), "batch_size": 16}
    raw["finetune"] = {
        "global_batch": 8,
        "micro_batch": 2,
        "max_length": 48,
        "max_steps": 8,
        "eval_interval": 4,
        "eval_batches": 1,
        "checkpoint_interval": 4,
        "warmup_steps": 2,
        "lr": 3e-3,
        "min_lr": 3e-4,
    }
    config = RunConfig.model_validate(raw)
    pretrain(config, quiet=True)
    return config, open_store(config.storage.root)
