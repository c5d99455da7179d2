"""Fine-tuning objective of `task: generate`: `SoraForCausalLM` trained to write the answers of a
generative suite (code_body, docstring, continuation) after their prompts.

The loss is next-token cross-entropy on the answer tokens only (`answer_examples.py` masks the
prompt and the padding); validation reports that loss per answer token and the fraction of answer
tokens predicted exactly (greedy next token), the trainer's `val_accuracy`. Where the weights start,
LoRA and the export are shared with `Classification` (`objective_base.py`); the export is a plain
`SoraForCausalLM` with the pretrained config (its tied LM head stored once), which lm-eval
evaluates as a `generator`.
"""

from __future__ import annotations

import torch

from sora import SoraForCausalLM, causal_lm_loss

from ..data.tokenizer_step import load_stored_tokenizer
from ..records import DatasetVersion
from ..storage import ObjectStore
from .answer_examples import IGNORE, AnswerExampleSet
from .objective_base import FinetuneObjective


class Generation(FinetuneObjective):
    """A causal LM fine-tuned on a generative suite's (prompt, answer) pairs, loss on the answers."""

    name = "generate"
    model_class = SoraForCausalLM
    auto_class = "AutoModelForCausalLM"

    # -- data ------------------------------------------------------------------------------------
    def samples(self, store: ObjectStore, manifest: DatasetVersion, split: str) -> AnswerExampleSet:
        block = manifest.tokenizer
        tokenizer = load_stored_tokenizer(store, block)
        key, length = self.split_key(split), self.task.max_length
        return AnswerExampleSet(store, key, tokenizer, length, block.pad_id, block.eos_id, self.task.suite)

    # -- loss ------------------------------------------------------------------------------------
    @staticmethod
    def _logits(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        # No attention mask: the padding is on the right and attention is causal, so no real
        # token ever attends to a pad, and pad positions carry no target.
        return module(input_ids=inputs, use_cache=False).logits

    def loss(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, labels = batch
        return causal_lm_loss(self._logits(module, inputs), labels)

    def eval_sums(self, module: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[loss x answer tokens, answer tokens, answer tokens whose greedy prediction is right]."""
        inputs, labels = batch
        logits = self._logits(module, inputs)
        targets = labels != IGNORE
        tokens = targets.sum()
        loss = causal_lm_loss(logits, labels)
        correct = ((logits.argmax(-1) == labels) & targets).sum()
        return torch.stack([loss.double() * tokens, tokens.double(), correct.double()])
