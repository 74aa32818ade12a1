import math

import pytest
import torch
import torch.nn.functional as F

from trustmed.distill.losses import GroupDistilLoss, GroupDROLoss, KDLoss, distillation_terms


def _batch(seed=0, n=12, classes=2):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(n, classes, generator=gen)
    teacher = torch.randn(n, classes, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return student, teacher, labels


def test_distillation_terms_match_hinton_formula():
    s, t, y = _batch(classes=3)
    T, alpha = 4.0, 0.9
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none").sum(
        -1
    )
    expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s, y, reduction="none")
    got = distillation_terms(s, y, t, temperature=T, alpha=alpha)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(KDLoss(T, alpha)(s, y, teacher_logits=t), expected.mean())


def test_one_update_by_hand():
    s, t, y = _batch()
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    loss = GroupDistilLoss(3, temperature=2.0, alpha=0.5, eta=0.3)
    per = distillation_terms(s, y, t, temperature=2.0, alpha=0.5)
    L = torch.stack([per[groups == g].mean() for g in range(3)])
    q = torch.full((3,), 1 / 3) * torch.exp(0.3 * L)
    q = q / q.sum()
    value = loss(s, y, groups, teacher_logits=t)
    torch.testing.assert_close(loss.group_weights, q)
    torch.testing.assert_close(value, (q * L).sum())


def test_adjustment_uses_training_counts():
    s, t, y = _batch()
    groups = torch.tensor([0] * 6 + [1] * 6)
    counts = [100, 4]
    loss = GroupDistilLoss(2, eta=0.1, adjustment=2.0, group_counts=counts)
    per = distillation_terms(s, y, t, temperature=4.0, alpha=0.9)
    L = torch.stack([per[:6].mean(), per[6:].mean()]) + 2.0 / torch.tensor([10.0, 2.0])
    q = torch.exp(0.1 * L) / torch.exp(0.1 * L).sum()
    loss(s, y, groups, teacher_logits=t)
    torch.testing.assert_close(loss.group_weights, q)


def test_absent_group_keeps_its_weight_and_q_stays_a_distribution():
    s, t, y = _batch()
    loss = GroupDistilLoss(3, eta=0.5)
    loss(s, y, torch.tensor([0, 1] * 6), teacher_logits=t)
    before = loss.group_weights.clone()
    loss(s, y, torch.tensor([0] * 6 + [2] * 6), teacher_logits=t)
    after = loss.group_weights
    assert after[1] == pytest.approx(float(before[1]), abs=1e-7)
    assert after[0] != pytest.approx(float(before[0]))
    assert float(after.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(after[0] + after[2]) == pytest.approx(float(before[0] + before[2]), abs=1e-6)


def test_log_space_update_survives_large_losses():
    # A multiplicative update on q underflows here: exp(-eta * 1000 * steps) is 0 in float32.
    loss = GroupDROLoss(2, eta=1.0)
    logits = torch.tensor([[30.0, -30.0], [-30.0, 30.0]])
    labels = torch.tensor([1, 1])  # group 0 wrong by a huge margin, group 1 right
    groups = torch.tensor([0, 1])
    for _ in range(100):
        value = loss(logits, labels, groups)
    q = loss.group_weights
    assert torch.isfinite(q).all() and torch.isfinite(value)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(q[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(loss.log_q[1]) < -1000  # the weight is far below float32's smallest number, still finite


def test_eval_mode_does_not_update_and_gradients_flow():
    s, t, y = _batch()
    s.requires_grad_(True)
    groups = torch.tensor([0, 1] * 6)
    loss = GroupDistilLoss(2, eta=1.0).eval()
    value = loss(s, y, groups, teacher_logits=t)
    torch.testing.assert_close(loss.group_weights, torch.tensor([0.5, 0.5]))
    value.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_state_dict_round_trip():
    s, t, y = _batch()
    loss = GroupDistilLoss(2, eta=1.0)
    loss(s, y, torch.tensor([0, 1] * 6), teacher_logits=t)
    fresh = GroupDistilLoss(2, eta=1.0)
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.log_q, loss.log_q)
    assert not torch.allclose(fresh.log_q, torch.full((2,), -math.log(2)))


def test_groupdro_is_cross_entropy_reweighting():
    s, _, y = _batch()
    groups = torch.tensor([0] * 12)
    value = GroupDROLoss(1)(s, y, groups)
    torch.testing.assert_close(value, F.cross_entropy(s, y))


def test_bad_parameters():
    with pytest.raises(ValueError):
        GroupDistilLoss(0)
    with pytest.raises(ValueError):
        GroupDistilLoss(2, alpha=1.5)
    with pytest.raises(ValueError):
        GroupDistilLoss(2, adjustment=1.0)
    with pytest.raises(ValueError):
        GroupDistilLoss(2)(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([0, 1]))
