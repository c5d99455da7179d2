"""Export a consolidated Hugging Face checkpoint (safetensors + tokenizer + config) to `runs/<run>/hf/`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from sora import SoraConfig, SoraForCausalLM

from ..data.tokenizer_step import load_stored_tokenizer
from ..keys import RunKeys
from ..storage import ObjectStore

EXPORT_SHARD_SIZE = "2GB"


def hf_tokenizer(tokenizer: Tokenizer, eos_id: int, pad_id: int) -> PreTrainedTokenizerFast:
    eos, pad = tokenizer.id_to_token(eos_id), tokenizer.id_to_token(pad_id)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=eos, pad_token=pad)


def export_hf(
    store: ObjectStore,
    dataset_store: ObjectStore,
    run: str,
    model_config: SoraConfig,
    state: dict[str, torch.Tensor],
    manifest: dict,
    info: dict,
) -> str:
    """Write the pretrained causal LM as an HF checkpoint and upload it; returns its URI."""
    model = SoraForCausalLM(model_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not model_config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"export: state dict mismatch (missing {missing}, unexpected {unexpected})")
    return upload_hf_model(store, dataset_store, run, model, manifest, info)


def upload_hf_model(
    store: ObjectStore, dataset_store: ObjectStore, run: str, model: PreTrainedModel, manifest: dict, info: dict
) -> str:
    """Save `model` with the dataset's tokenizer and lineage to `runs/<run>/hf/`; returns its URI."""
    block = manifest["tokenizer"]
    tokenizer = hf_tokenizer(load_stored_tokenizer(dataset_store, block), block["eos_id"], block["pad_id"])
    prefix = RunKeys(run).export
    with tempfile.TemporaryDirectory() as tmp:
        # Sharded safetensors (+ index) so no single object approaches S3's limits; every file
        # streams up (multipart when large) instead of being read into memory.
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=EXPORT_SHARD_SIZE)
        tokenizer.save_pretrained(tmp)
        Path(tmp, "sora_export.json").write_text(json.dumps(info, indent=1, sort_keys=True))
        # config.json last: its presence is what marks an export complete.
        for path in sorted(Path(tmp).iterdir(), key=lambda p: (p.name == "config.json", p.name)):
            store.upload_file(f"{prefix}/{path.name}", path)
    return store.uri(prefix)
