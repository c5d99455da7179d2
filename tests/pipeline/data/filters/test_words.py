"""The word splitter's line-by-line fast path gives exactly the tokens of its full pattern."""

import sysconfig
from pathlib import Path

import pytest

from pipeline.data.filters.words import _WORDS, split_words

ADVERSARIAL = [
    "",
    "\n\n",
    "don't\nwon’T stop\nN'T",
    "mail jane.doe@example.com\nor @property\nx@y",
    "see https://example.com/a?b=1.\nwww.example.org, then\n3.14 and 1,000,000",
    "it's they're I'd we'll\nno newline at the end: isn't",
    "a@b\nn't\n",
    "-- ~~ ... ----- a--b\n\tcan't\t",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_texts_split_as_the_full_pattern(text):
    assert split_words(text) == _WORDS.findall(text)


def test_real_files_split_as_the_full_pattern():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(errors="replace") for p in sorted(stdlib.rglob("*.py"))[:150]]
    texts += [p.read_text(errors="replace") for p in sorted(stdlib.rglob("*.txt"))[:30]]
    assert all(split_words(t) == _WORDS.findall(t) for t in texts)
