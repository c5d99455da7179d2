"""The distillation loss (Hinton et al., 2015): next-token cross-entropy mixed with the KL divergence
from the teacher's temperature-softened next-token distribution to the student's.

    loss = (1 - alpha) x CE(student, labels) + alpha x T^2 x KL(p_teacher^T || p_student^T)

Direction: forward KL, KL(teacher || student) = sum_v p_t (log p_t - log p_s). It is cross-entropy
against the teacher's soft targets minus the teacher's entropy (a constant for the student), so its
gradient with respect to the student's logits is (p_s - p_t) / T, the soft-target gradient of the
Hinton form; it is mass-covering: the student is penalized wherever the teacher puts probability
and the student does not, which is what passes on the teacher's "dark knowledge" (the relative
probabilities of the wrong tokens). Reverse KL (student || teacher) is mode-seeking, used when the
student samples its own sequences (on-policy distillation); here both read the same packed
pretraining blocks. T^2 keeps the KL term's gradient on the scale of the cross-entropy's as T
changes (the soft gradient shrinks by 1/T^2), so alpha means the same at every temperature.

Memory: both logit tensors are [micro_batch, seq, vocab], upcast here to fp32, and the log-softmax
outputs are kept for the backward pass: ~4 x tokens x vocab x 4 bytes. For a tiny model that is
nothing; at 7B with a 50k vocabulary and 4k tokens per micro-batch it is ~3.3 GB. A chunked KL would
run the teacher's and the student's final-norm hidden states through their LM heads a few hundred
tokens at a time, each chunk's KL under `torch.utils.checkpoint` (so only the hidden states are
kept and a chunk's logits are recomputed in the backward pass), summing the chunks' KL; that needs
the models to return hidden states instead of logits, so it is not done here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sora import causal_lm_loss


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    kl_weight: float,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The mixed loss, a mean over the batch's targets (positions whose label is not `ignore_index`).

    `kl_weight` 0 is exactly the causal-LM cross-entropy (the teacher's logits are not read, and
    may be None). The teacher's logits are detached: no gradient ever reaches the teacher.
    """
    cross_entropy = causal_lm_loss(student_logits, labels, ignore_index)
    if kl_weight == 0:
        return cross_entropy
    if teacher_logits is None or teacher_logits.shape != student_logits.shape:
        shape = None if teacher_logits is None else tuple(teacher_logits.shape)
        raise ValueError(f"teacher logits {shape} do not match the student's {tuple(student_logits.shape)}")
    targets = labels != ignore_index
    student = F.log_softmax(student_logits[targets].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach()[targets].float() / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target) sums p (log p - log q): KL(teacher || student).
    kl = F.kl_div(student, teacher, reduction="sum", log_target=True) / targets.sum().clamp(min=1)
    return (1 - kl_weight) * cross_entropy + kl_weight * temperature**2 * kl
