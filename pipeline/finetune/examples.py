"""Fine-tuning examples of the `classify` suite, tokenized once per worker and held as arrays.

The suite is small (thousands of snippets), so each worker reads its split's jsonl, tokenizes it
in one Rust batch call and keeps padded arrays; `batch(ids)` is then an index operation, which
is all the shared `TrainLoader` (seeded order, exact resume) needs from a sample source.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tokenizers import Tokenizer

from ..storage import ObjectStore


class ExampleSet:
    """Token ids (right-padded), attention masks and label ids of one classify split."""

    def __init__(self, store: ObjectStore, key: str, tokenizer: Tokenizer, max_length: int, pad_id: int) -> None:
        rows = [json.loads(line) for line in store.read(key).decode().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"fine-tuning split {store.uri(key)} has no examples")
        encoded = tokenizer.encode_batch_fast([row["text"] for row in rows], add_special_tokens=False)
        self.input_ids = np.full((len(rows), max_length), pad_id, dtype=np.int64)
        self.attention_mask = np.zeros((len(rows), max_length), dtype=np.int64)
        for index, encoding in enumerate(encoded):
            ids = encoding.ids[:max_length] or [pad_id]  # an empty snippet still yields one position
            self.input_ids[index, : len(ids)] = ids
            self.attention_mask[index, : len(ids)] = 1
        self.labels = np.asarray([row["label_id"] for row in rows], dtype=np.int64)
        # Snippets longer than max_length, cut to their start (the driver reports their share).
        self.truncated = sum(len(encoding.ids) > max_length for encoding in encoded)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(self.input_ids[ids]),
            torch.from_numpy(self.attention_mask[ids]),
            torch.from_numpy(self.labels[ids]),
        )
