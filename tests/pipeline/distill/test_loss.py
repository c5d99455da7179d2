"""The distillation loss: alpha 0 is the plain next-token cross-entropy, alpha 1 the Hinton KL term
(T^2 x KL(teacher || student) on softened distributions, over target positions only), and no
gradient reaches the teacher."""

import pytest
import torch

from pipeline.distill.loss import distillation_loss
from sora import causal_lm_loss


def _batch(seed: int = 0, vocab: int = 11):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 5, vocab, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 5, vocab, generator=generator, requires_grad=True)  # as if it could learn
    labels = torch.randint(0, vocab, (2, 5), generator=generator)
    labels[1, 3:] = -100  # padding: neither term may read these positions
    return student, teacher, labels


def _kl_by_hand(student, teacher, labels, temperature):
    """sum_v p_t (log p_t - log p_s) at each target position, softmax at T, averaged over targets."""
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == -100:
                continue
            p_t = torch.softmax(teacher[b, t].double() / temperature, -1)
            p_s = torch.softmax(student[b, t].double() / temperature, -1)
            terms.append((p_t * (p_t.log() - p_s.log())).sum())
    return torch.stack(terms).mean()


def test_alpha_zero_is_exactly_the_cross_entropy():
    student, teacher, labels = _batch()
    expected = causal_lm_loss(student, labels)
    assert torch.equal(distillation_loss(student, teacher, labels, 2.0, 0.0), expected)
    assert torch.equal(distillation_loss(student, None, labels, 2.0, 0.0), expected)  # the baseline has no teacher


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_alpha_one_is_t_squared_times_the_forward_kl(temperature):
    student, teacher, labels = _batch(1)
    loss = distillation_loss(student, teacher, labels, temperature, 1.0)
    expected = temperature**2 * _kl_by_hand(student, teacher, labels, temperature)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Forward KL, not reverse: swapping the roles gives another number.
    reverse = temperature**2 * _kl_by_hand(teacher, student, labels, temperature)
    assert abs(loss.item() - reverse.item()) > 1e-3


def test_mixture_weights_both_terms():
    student, teacher, labels = _batch(2)
    alpha, temperature = 0.3, 2.0
    expected = (1 - alpha) * causal_lm_loss(student, labels) + alpha * temperature**2 * _kl_by_hand(
        student, teacher, labels, temperature
    )
    loss = distillation_loss(student, teacher, labels, temperature, alpha)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_reaches_the_student_only_and_is_the_soft_target_gradient():
    student, teacher, labels = _batch(3)
    temperature = 2.0
    distillation_loss(student, teacher, labels, temperature, 1.0).backward()
    assert teacher.grad is None  # detached: the teacher never learns
    # d/dz_s of T^2 KL at one target position is T (p_s - p_t); zero at padded positions.
    targets = labels != -100
    p_s = torch.softmax(student.detach() / temperature, -1)
    p_t = torch.softmax(teacher.detach() / temperature, -1)
    expected = temperature * (p_s - p_t) * targets[..., None] / targets.sum()
    torch.testing.assert_close(student.grad, expected, rtol=1e-4, atol=1e-6)


def test_teacher_of_another_vocabulary_is_refused():
    student, _, labels = _batch(4)
    with pytest.raises(ValueError, match="do not match"):
        distillation_loss(student, torch.randn(2, 5, 12), labels, 2.0, 0.5)
