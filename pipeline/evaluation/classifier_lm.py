"""lm-eval model `sora-classifier`: a fine-tuned `SoraForSequenceClassification` answering `sora_classify`.

lm-eval scores a multiple-choice task by asking the model for `loglikelihood(context, target
delimiter + choice)` of every choice. A classifier has exactly that number for each class: the
log-softmax of its logits. Answering with it lets lm-eval compute acc (and its stderr) for the
fine-tuned classifier with the same code, data and aggregation as for the language model.

The context is the snippet itself (the suite's `doc_to_text` is `{{text}}` and zero-shot), and the
continuation is `CLASSIFY_DELIMITER + class name`, mapped to a class id through the checkpoint's
`id2label`. Any other request type or continuation is an error: a classifier only runs
`sora_classify`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from transformers import AutoTokenizer

import sora  # noqa: F401  (registers the Sora classes with the Auto classes)
from sora import SoraForSequenceClassification

from ..errors import UserError
from ..suites.build import CLASSIFY_DELIMITER


@register_model("sora-classifier")
class SoraClassifierLM(LM):
    """A `SoraForSequenceClassification` HF checkpoint (config with `id2label`, safetensors, tokenizer)."""

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str | None = 16,
        device: str | None = "cpu",
        dtype: str | torch.dtype | None = "float32",
        **_: object,
    ) -> None:
        super().__init__()
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
        self._device = torch.device(device or "cpu")
        # Loaded straight onto the device in its dtype: no full float32 copy on the host first.
        self.model = SoraForSequenceClassification.from_pretrained(pretrained, dtype=dtype, device_map=self._device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.label_id = {name: int(i) for i, name in self.model.config.id2label.items()}
        # Truncate where fine-tuning did: a last-token classifier shown longer inputs than it trained on
        # pools a position it never learned from (exports before this attribute: the model's limit).
        config = self.model.config
        self.max_length = int(getattr(config, "classifier_max_length", None) or config.max_position_embeddings)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.model.config.pad_token_id or 0)

    def _class_of(self, continuation: str) -> int:
        if not continuation.startswith(CLASSIFY_DELIMITER):
            raise UserError(
                f"sora-classifier only answers sora_classify (continuations start with {CLASSIFY_DELIMITER!r}); "
                f"got {continuation[:40]!r}"
            )
        name = continuation[len(CLASSIFY_DELIMITER) :]
        if name not in self.label_id:
            raise UserError(f"class {name!r} is not one of the classifier's labels {sorted(self.label_id)}")
        return self.label_id[name]

    @torch.no_grad()
    def _log_probs(self, contexts: list[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        unique = sorted(set(contexts))
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_length] for text in chunk]
            width = max(1, max(len(i) for i in ids))
            input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, tokens in enumerate(ids):  # right padding: the classifier pools the last real token
                input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                mask[row, : len(tokens)] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for text, row in zip(chunk, F.log_softmax(logits.float(), dim=-1).cpu(), strict=True):
                out[text] = row
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [request.args for request in requests]
        for request in requests:
            if request.task_name not in (None, "sora_classify"):
                raise UserError(f"sora-classifier only runs sora_classify, not {request.task_name}")
        classes = [self._class_of(continuation) for _, continuation in pairs]
        scores = self._log_probs([context for context, _ in pairs])
        results = []
        for (context, _), label in zip(pairs, classes, strict=True):
            row = scores[context]
            results.append((float(row[label]), bool(int(row.argmax()) == label)))
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        raise UserError("sora-classifier only runs sora_classify (it has no language-model head for perplexity)")

    def generate_until(self, requests) -> list[str]:
        raise UserError("sora-classifier only runs sora_classify (it cannot generate text)")
