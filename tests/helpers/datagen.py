"""Test data generators shared by the data-stage and training tests (no fixtures here)."""

import json
import random

from pipeline.config.run import RunConfig

N_UNIQUE = 240
EXACT_DUPLICATES = 6
NEAR_DUPLICATES = 5


def _words(rng: random.Random, vocabulary: list[str], n: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(n))


def make_documents(seed: int = 0, n: int = N_UNIQUE, prefix: str = "") -> list[str]:
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(600)
    ]
    return [f"{prefix}doc {i}: " + _words(rng, vocabulary, rng.randint(60, 160)) for i in range(n)]


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    position = rng.randrange(2, len(words))
    words[position] = words[position] + "x"  # one word in ~100 changed: Jaccard of shingles ~0.95
    return " ".join(words)


def write_jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "meta": i}) + "\n" for i, t in enumerate(texts)))


def make_corpus(directory):
    """Unique docs in 3 jsonl files + planted exact and near duplicates in a 4th; returns the unique docs."""
    docs = make_documents()
    third = len(docs) // 3
    for k in range(3):
        write_jsonl(directory / f"part-{k}.jsonl", docs[k * third : (k + 1) * third])
    rng = random.Random(1)
    planted = [docs[i] for i in range(0, EXACT_DUPLICATES * 7, 7)]
    planted += [near_copy(docs[i], rng) for i in range(3, 3 + NEAR_DUPLICATES * 11, 11)]
    write_jsonl(directory / "part-3.jsonl", planted)
    return docs


def data_config(root: str, source_uri: str, name: str = "test", settings=None, **data_overrides) -> RunConfig:
    storage = {"root": root}
    if settings is not None and settings.endpoint_url:
        storage["endpoint_url"] = settings.endpoint_url
    data = {
        "name": name,
        "sources": [{"kind": "jsonl", "uri": source_uri}],
        "seq_len": 32,
        "tokenizer": {"vocab_size": 400, "sample_bytes": 1 << 20},
        "split": {"val_fraction": 0.1, "heldout_fraction": 0.05},
        "filters": {"max_doc_bytes": 20000, "min_chars": 8},
        "shard_bytes": 1 << 16,
        **data_overrides,
    }
    return RunConfig.model_validate({"storage": storage, "ray": {"num_cpus": 2}, "data": data})
