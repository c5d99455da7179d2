"""Examples of a generative suite (`{"prompt", "answer", ...}` rows) as causal-LM inputs whose
targets are the answer tokens only, tokenized once per worker and held as arrays.

Prompt and answer are tokenized apart, so the boundary between them is a token boundary: the
model is trained to continue exactly the prompt tokens it is given at evaluation (lm-eval's
`generate_until` encodes the prompt alone), and the label mask is exact.

A complete answer ends with EOS, so the model learns where an answer stops; an answer cut by the
suite builder gets none, or the model would learn to stop in mid-function. A row's `complete`
field decides when it has one; otherwise the suite does (`COMPLETE_ANSWERS`): a docstring answer
is the docstring's whole first line (EOS), a code_body answer the first lines of a longer body and
a continuation answer a ~120-character cut of the text that goes on (no EOS).

An example is at most `max_length` tokens: when prompt + answer are longer, the answer keeps its
first tokens, down to half the budget (a cut answer loses its EOS: it does not end there), and the
prompt keeps its last tokens, the ones the answer follows, in what is left. Inputs are
right-padded; labels are the next token where that token belongs to the answer, -100 elsewhere
(prompt, padding, the last token).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tokenizers import Tokenizer

from ..storage import ObjectStore

IGNORE = -100  # label of a position without a target (torch cross-entropy's ignore_index)
# Whether a suite's answers end where the text ends, for rows without a `complete` field.
COMPLETE_ANSWERS = {"docstring": True, "code_body": False, "continuation": False}


def answer_is_complete(row: dict, suite: str) -> bool:
    """Whether the answer of `row` is all of what it answers (then it ends with EOS): the row's
    `complete` field when it has one, else the suite's rule (`COMPLETE_ANSWERS`)."""
    if "complete" in row:
        return bool(row["complete"])
    if suite not in COMPLETE_ANSWERS:
        raise ValueError(f"rows of suite {suite!r} need a `complete` field (known suites: {sorted(COMPLETE_ANSWERS)})")
    return COMPLETE_ANSWERS[suite]


def fit_example(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """(prompt, answer) cut to at most `max_length` tokens together: the answer's start (at least
    half the budget, when it is that long) and the prompt's end."""
    if len(prompt) + len(answer) <= max_length:
        return prompt, answer
    answer_kept = min(len(answer), max(max_length - len(prompt), max_length // 2))
    prompt_kept = max_length - answer_kept
    return prompt[len(prompt) - prompt_kept :], answer[:answer_kept]


def encode_examples(
    prompts: list[list[int]],
    answers: list[list[int]],
    max_length: int,
    pad_id: int,
    eos_id: int | None,
    complete: list[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, labels), each (examples, max_length): inputs right-padded with `pad_id`; labels
    aligned to the inputs (label i is the target after input token i), `IGNORE` but on answer tokens.
    `complete[i]`: answer i ends with `eos_id` (default: every answer)."""
    input_ids = np.full((len(prompts), max_length), pad_id, dtype=np.int64)
    labels = np.full((len(prompts), max_length), IGNORE, dtype=np.int64)
    complete = [True] * len(prompts) if complete is None else complete
    for row, (prompt, answer, ends) in enumerate(zip(prompts, answers, complete, strict=True)):
        ending = [eos_id] if ends and eos_id is not None else []
        prompt, answer = fit_example(prompt, answer + ending, max_length)
        tokens = prompt + answer
        input_ids[row, : len(tokens)] = tokens
        # The first answer token is predicted from the last prompt token; without a prompt the
        # first answer token has nothing to be predicted from.
        first = max(len(prompt) - 1, 0)
        if len(tokens) > first + 1:
            labels[row, first : len(tokens) - 1] = tokens[first + 1 :]
    return input_ids, labels


class AnswerExampleSet:
    """Input ids and answer-only labels of one split of a generative suite (the `Samples` protocol)."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        tokenizer: Tokenizer,
        max_length: int,
        pad_id: int,
        eos_id: int | None,
        suite: str,
    ) -> None:
        rows = [json.loads(line) for line in store.read(key).decode().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"fine-tuning split {store.uri(key)} has no examples")
        prompts = [e.ids for e in tokenizer.encode_batch_fast([r["prompt"] for r in rows], add_special_tokens=False)]
        answers = [e.ids for e in tokenizer.encode_batch_fast([r["answer"] for r in rows], add_special_tokens=False)]
        complete = [answer_is_complete(row, suite) for row in rows]
        self.input_ids, self.labels = encode_examples(prompts, answers, max_length, pad_id, eos_id, complete)
        # Examples longer than max_length, cut by `fit_example` (the driver reports their share).
        ending = 1 if eos_id is not None else 0
        self.truncated = sum(
            len(p) + len(a) + (ending if ends else 0) > max_length
            for p, a, ends in zip(prompts, answers, complete, strict=True)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.input_ids[ids]), torch.from_numpy(self.labels[ids])
