"""Export a consolidated Hugging Face checkpoint (safetensors + tokenizer + config) to `runs/<run>/hf/`.

The one export tail of every run: the objective turns the trained weights into a plain HF model
(`Objective.export_model`) and its lineage (`Objective.export_info`); this writes both, with the
dataset's tokenizer, `config.json` last (its presence marks the export complete).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..data.tokenizer_step import load_stored_tokenizer
from ..keys import RunKeys
from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore

EXPORT_SHARD_SIZE = "2GB"


def hf_tokenizer(tokenizer: Tokenizer, eos_id: int, pad_id: int) -> PreTrainedTokenizerFast:
    eos, pad = tokenizer.id_to_token(eos_id), tokenizer.id_to_token(pad_id)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=eos, pad_token=pad)


def upload_hf_model(
    store: ObjectStore, run: str, model: PreTrainedModel, manifest: DatasetVersion, info: ExportInfo
) -> str:
    """Save `model` with the dataset's tokenizer and lineage to `runs/<run>/hf/`; returns its URI."""
    block = manifest.tokenizer
    tokenizer = hf_tokenizer(load_stored_tokenizer(store, block), block.eos_id, block.pad_id)
    prefix = RunKeys(run).export
    with tempfile.TemporaryDirectory() as tmp:
        # Sharded safetensors (+ index) so no single object approaches S3's limits; every file
        # streams up (multipart when large) instead of being read into memory.
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=EXPORT_SHARD_SIZE)
        tokenizer.save_pretrained(tmp)
        info.write_local(Path(tmp))
        # config.json last: its presence is what marks an export complete.
        for path in sorted(Path(tmp).iterdir(), key=lambda p: (p.name == "config.json", p.name)):
            store.upload_file(f"{prefix}/{path.name}", path)
    return store.uri(prefix)
