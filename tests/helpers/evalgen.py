"""Test data for evaluation tests: a labelled corpus, scaled-down suite settings, tiny HF exports."""

import random

import torch

from pipeline.config.evaluate import EvalConfig
from pipeline.config.run import RunConfig

CLASSES = ["alpha", "beta", "gamma", "delta"]
DOCS_PER_CLASS = 60
RARE = "rare"  # a label with too few documents: dropped by min_docs_per_class


def labelled_documents(seed: int = 0) -> list[dict]:
    """Multi-line documents whose words depend on their class (a classifier can learn the label)."""
    rng = random.Random(seed)
    rows = []
    for label in CLASSES + [RARE]:
        vocabulary = [
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(80)
        ]
        for i in range(2 if label == RARE else DOCS_PER_CLASS):
            lines = [
                " " * rng.choice([0, 4, 8]) + " ".join(rng.choice(vocabulary) for _ in range(rng.randint(4, 10)))
                for _ in range(rng.randint(10, 22))
            ]
            rows.append({"text": f"# {label} document {i}\n" + "\n".join(lines) + "\n", "topic": label})
    rng.shuffle(rows)
    return rows


def suite_settings(**overrides) -> dict:
    """Suite sizes scaled to the small test corpus (seconds through lm-eval on a tiny model)."""
    return {
        "min_test_examples": 30,
        "ppl_max_docs": 6,
        "ppl_max_chars": 300,
        "cloze_context_chars": 120,
        "cloze_ending_chars": 40,
        "cloze_per_doc": 2,
        "cloze_max_examples": 40,
        "classify_snippet_chars": 120,
        "classify_snippets_per_doc": 2,
        "classify_min_docs_per_class": 4,
        "classify_max_per_class": 10,
        "classify_train_max_per_class": 20,
        "classify_min_snippet_chars": 20,
        **overrides,
    }


def eval_config(**suite_overrides) -> EvalConfig:
    return EvalConfig.model_validate({"suites": suite_settings(**suite_overrides), "batch_size": 16})


def export_tiny(directory, manifest, store, head: str = "causal_lm", classes=None, **config_fields):
    """A random-init tiny Sora model + the dataset's tokenizer, saved in HF format."""
    from pipeline.data.tokenizer_step import load_stored_tokenizer
    from pipeline.train.export import hf_tokenizer
    from sora import SoraConfig, SoraForCausalLM, SoraForSequenceClassification

    block = manifest.tokenizer
    torch.manual_seed(0)
    overrides = dict(vocab_size=block.vocab_size, eos_token_id=block.eos_id, pad_token_id=block.pad_id)
    overrides |= config_fields
    if head == "classifier":
        overrides |= dict(num_labels=len(classes), id2label=dict(enumerate(classes)))
        overrides["label2id"] = {c: i for i, c in enumerate(classes)}
        model = SoraForSequenceClassification(SoraConfig.from_preset("tiny", **overrides))
    else:
        model = SoraForCausalLM(SoraConfig.from_preset("tiny", **overrides))
    model.save_pretrained(directory)
    hf_tokenizer(load_stored_tokenizer(store, block), block.eos_id, block.pad_id).save_pretrained(directory)
    return directory


def publish_in_process(root: str, docs: list[dict], config):
    """Publish a dataset version from `docs` with the data stage's own step functions, in this process
    (no Ray, no dedup): content-hash split, BPE tokenizer, packed train/val shards, held-out text shard,
    manifest published under a lease. Seconds instead of a Ray Data job, for tests that need a dataset
    version but do not test the data stage itself."""
    import pyarrow as pa

    from pipeline.data.shards import blocks_table, pack, token_dtype, write_shard
    from pipeline.data.steps import content_hash
    from pipeline.data.tokenize_pack import assign_split
    from pipeline.data.tokenizer_step import store_tokenizer, train_tokenizer
    from pipeline.keys import DatasetKeys
    from pipeline.records import BuildStats, Manifest, ManifestStats, ShardEntry, publish
    from pipeline.storage import open_store
    from pipeline.storage.lease import acquire_lease

    data = config.data
    store = open_store(root)
    keys = DatasetKeys(data.name)
    split_of = {i: assign_split(content_hash(d["text"]), data) for i, d in enumerate(docs)}
    train = [(content_hash(d["text"]), d["text"]) for i, d in enumerate(docs) if split_of[i] == "train"]
    tokenizer, eos_id, pad_id = train_tokenizer(data, train)
    block = store_tokenizer(store, keys.prefix, tokenizer, eos_id, pad_id)
    dtype = token_dtype(block.vocab_size)
    shards = {"train": [], "val": [], "heldout": []}
    for split in shards:
        members = sorted((d for i, d in enumerate(docs) if split_of[i] == split), key=lambda d: d["text"])
        key = f"{keys.prefix}/shards/inproc/{split}/part-00000.arrow"
        if split == "heldout":
            table = pa.table(
                {
                    "doc_key": pa.array([f"doc{i}#0" for i in range(len(members))], pa.string()),
                    "label": pa.array([d.get("topic") for d in members], pa.string()),
                    "text": pa.array([d["text"] for d in members], pa.string()),
                }
            )
            entry = write_shard(store, key, table, tokens=0)
        else:
            ids = [tokenizer.encode(d["text"], add_special_tokens=False).ids for d in members]
            blocks, valid = pack(ids, eos_id, pad_id, data.seq_len + 1, dtype)
            entry = write_shard(store, key, blocks_table(blocks, valid), tokens=int(valid.sum()))
        shards[split].append(ShardEntry(**entry, docs=len(members)))
    manifest = Manifest(
        schema_version=1,
        version=1,
        parent_version=None,
        dataset=data.name,
        seq_len=data.seq_len,
        dtype=str(dtype),
        tokenizer=block,
        shards=shards,
        stats=ManifestStats(run=BuildStats(), total=BuildStats()),
    )
    lease = acquire_lease(store, keys.lease, 60)
    publish(store, manifest, None, lease)
    lease.release()
    return manifest


def labelled_config(base, root: str | None = None) -> RunConfig:
    """Write the labelled corpus under `base` and return a run config (data + eval sections) on it."""
    import json

    corpus = base / "corpus" / "docs.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps(d) + "\n" for d in labelled_documents()))
    return RunConfig.model_validate(
        {
            "storage": {"root": root or str(base / "store")},
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
            "eval": {"suites": suite_settings(), "batch_size": 16},
        }
    )


def finetune_settings(**overrides) -> dict:
    """A fine-tune section sized for the labelled corpus and the test model (seconds per run)."""
    return {
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
        **overrides,
    }
