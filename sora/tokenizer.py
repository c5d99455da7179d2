"""Tokenizer helpers: train a byte-level BPE, save it as a HF fast tokenizer, load it back.

Training uses Hugging Face `tokenizers`. The result depends only on the texts (in order) and the
arguments, so the data stage can train on a deterministic sample and get the same vocabulary on
every run; a sha256 of the saved `tokenizer.json` identifies it in manifests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`; EOS is id 0 and PAD id 1.

    Byte-level means any input (any language, any bytes) is encodable without unknown tokens.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} for a byte-level BPE")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def as_pretrained_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` as a `PreTrainedTokenizerFast` with EOS and PAD set."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=EOS_TOKEN,
        model_max_length=1_000_000,
    )


def save_tokenizer(tokenizer: Tokenizer | PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Save as a HF fast tokenizer directory (tokenizer.json + tokenizer_config.json)."""
    if isinstance(tokenizer, Tokenizer):
        tokenizer = as_pretrained_tokenizer(tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a saved directory or a bare `tokenizer.json` file."""
    path = Path(path)
    if path.is_file():
        return as_pretrained_tokenizer(Tokenizer.from_file(str(path)))
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json under {path}")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """Content hash of a tokenizer (its canonical JSON), used to name and verify it."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
