"""Tokenizer helpers: deterministic byte-level BPE, save/load with EOS and PAD."""

import pytest

from sora.tokenizer import EOS_TOKEN, load_tokenizer, save_tokenizer, tokenizer_sha256, train_bpe

TEXTS = [f"def function_{i}(value):\n    return value * {i} + 'héllo wörld'\n" for i in range(200)]


def test_training_is_deterministic():
    a, b = train_bpe(TEXTS, vocab_size=400), train_bpe(TEXTS, vocab_size=400)
    assert tokenizer_sha256(a) == tokenizer_sha256(b)
    assert a.get_vocab_size() <= 400
    assert a.token_to_id(EOS_TOKEN) == 0


def test_save_load_round_trip(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=400)
    save_tokenizer(tok, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.eos_token == EOS_TOKEN and loaded.eos_token_id == 0 and loaded.pad_token_id == 1
    text = "def g(x):\n    return 'ünïcode ✓'"
    ids = loaded(text)["input_ids"]
    assert ids == tok.encode(text).ids
    assert loaded.decode(ids) == text  # byte-level: lossless, no unknown tokens
    assert load_tokenizer(tmp_path / "tok" / "tokenizer.json").encode(text) == ids


def test_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(TEXTS, vocab_size=100)
    with pytest.raises(FileNotFoundError):
        load_tokenizer("/nonexistent/dir")
