"""Examples of a generative suite (`{"prompt", "answer", ...}` rows) as causal-LM inputs whose
targets are the answer tokens only, tokenized once per worker and held as arrays.

Prompt and answer are tokenized apart, so the boundary between them is a token boundary: the
model is trained to continue exactly the prompt tokens it is given at evaluation (lm-eval's
`generate_until` encodes the prompt alone), and the label mask is exact. The answer ends with EOS,
so the model learns where an answer stops. An example is at most `max_length` tokens: when prompt
+ answer are longer, the answer keeps its first tokens, down to half the budget (a cut answer
loses its EOS: it does not end there), and the prompt keeps its last tokens, the ones the answer
follows, in what is left. Inputs are right-padded; labels are the next token where that token
belongs to the answer, -100 elsewhere (prompt, padding, the last token).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tokenizers import Tokenizer

from ..storage import ObjectStore

IGNORE = -100  # label of a position without a target (torch cross-entropy's ignore_index)


def fit_example(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """(prompt, answer) cut to at most `max_length` tokens together: the answer's start (at least
    half the budget, when it is that long) and the prompt's end."""
    if len(prompt) + len(answer) <= max_length:
        return prompt, answer
    answer_kept = min(len(answer), max(max_length - len(prompt), max_length // 2))
    prompt_kept = max_length - answer_kept
    return prompt[len(prompt) - prompt_kept :], answer[:answer_kept]


def encode_examples(
    prompts: list[list[int]], answers: list[list[int]], max_length: int, pad_id: int, eos_id: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, labels), each (examples, max_length): inputs right-padded with `pad_id`; labels
    aligned to the inputs (label i is the target after input token i), `IGNORE` but on answer tokens."""
    input_ids = np.full((len(prompts), max_length), pad_id, dtype=np.int64)
    labels = np.full((len(prompts), max_length), IGNORE, dtype=np.int64)
    ending = [eos_id] if eos_id is not None else []
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
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
        self, store: ObjectStore, key: str, tokenizer: Tokenizer, max_length: int, pad_id: int, eos_id: int | None
    ) -> None:
        rows = [json.loads(line) for line in store.read(key).decode().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"fine-tuning split {store.uri(key)} has no examples")
        prompts = tokenizer.encode_batch_fast([row["prompt"] for row in rows], add_special_tokens=False)
        answers = tokenizer.encode_batch_fast([row["answer"] for row in rows], add_special_tokens=False)
        self.input_ids, self.labels = encode_examples(
            [e.ids for e in prompts], [e.ids for e in answers], max_length, pad_id, eos_id
        )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.input_ids[ids]), torch.from_numpy(self.labels[ids])
