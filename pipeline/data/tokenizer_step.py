"""Which tokenizer a dataset version uses: its parent's, a given one, or one trained here.

Training uses a deterministic sample: kept training documents in content-hash order (a stable,
source-independent shuffle) up to `sample_bytes`. The tokenizer is stored content-addressed at
`<dataset>/tokenizer/<sha256>/tokenizer.json`; the manifest records its EOS and PAD ids.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from typing import Any

from tokenizers import Tokenizer

from ..config.data import DataConfig
from ..errors import UserError
from ..records import TokenizerInfo
from ..storage import ObjectStore


def sample_texts(texts_by_hash: list[tuple[bytes, str]], sample_bytes: int) -> list[str]:
    sample, total = [], 0
    for _, text in sorted(texts_by_hash, key=lambda pair: hashlib.sha256(pair[0]).digest()):
        sample.append(text)
        total += len(text.encode("utf-8", "surrogatepass"))
        if total >= sample_bytes:
            break
    return sample


def given_tokenizer(config: DataConfig) -> tuple[Tokenizer, int, int] | None:
    """The configured tokenizer with its EOS and PAD ids (PAD falls back to EOS)."""
    if not config.tokenizer.path:
        return None
    from sora.tokenizer import load_tokenizer  # see train_tokenizer

    try:
        fast = load_tokenizer(config.tokenizer.path)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"tokenizer {config.tokenizer.path} cannot be loaded: {error}") from None
    if fast.eos_token_id is None:
        raise UserError(f"tokenizer {config.tokenizer.path} has no EOS token")
    pad = fast.pad_token_id if fast.pad_token_id is not None else fast.eos_token_id
    return fast.backend_tokenizer, fast.eos_token_id, pad


def train_tokenizer(config: DataConfig, texts_by_hash: list[tuple[bytes, str]]) -> tuple[Tokenizer, int, int]:
    # Imported here: `sora` loads torch and transformers (seconds), and Ray workers import this
    # module whenever they unpickle a function of `stage.py`, though they never train.
    from sora.tokenizer import EOS_TOKEN, PAD_TOKEN, train_bpe

    texts = sample_texts(texts_by_hash, config.tokenizer.sample_bytes)
    with _parallel_tokenizers():
        tokenizer = train_bpe(texts, config.tokenizer.vocab_size)
    return tokenizer, tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(PAD_TOKEN)


@contextmanager
def _parallel_tokenizers():
    """Training runs on the driver while the workers wait for the tokenizer: let `tokenizers` use
    the driver's cores (about 30 % faster on 2 cores; the merges come out the same). Processes that
    tokenize for Ray keep `TOKENIZERS_PARALLELISM=false`: Ray supplies their parallelism."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def store_tokenizer(
    store: ObjectStore, dataset_prefix: str, tokenizer: Tokenizer, eos_id: int, pad_id: int
) -> TokenizerInfo:
    """Upload (create-if-absent, content-addressed) and return the manifest's tokenizer block."""
    body = tokenizer.to_str().encode()
    sha = hashlib.sha256(body).hexdigest()
    key_dir = f"{dataset_prefix}/tokenizer/{sha}"
    store.create(f"{key_dir}/tokenizer.json", body)
    return TokenizerInfo(
        uri=store.uri(f"{key_dir}/tokenizer.json"),
        key=f"{key_dir}/tokenizer.json",
        sha256=sha,
        vocab_size=tokenizer.get_vocab_size(),
        eos_id=eos_id,
        pad_id=pad_id,
    )


def load_stored_tokenizer(store: ObjectStore, info: TokenizerInfo | dict[str, Any]) -> Tokenizer:
    """The tokenizer of a manifest's `tokenizer` block, checked against its sha256. (A plain dict
    is accepted while callers move to `TokenizerInfo`.)"""
    if not isinstance(info, TokenizerInfo):
        info = TokenizerInfo.from_dict(info)
    body = store.read(info.key)
    if hashlib.sha256(body).hexdigest() != info.sha256:
        raise UserError(f"tokenizer {info.uri} does not match its sha256 in the manifest")
    return Tokenizer.from_str(body.decode())
