"""GroupDistil does what it is for, on a constructed two-group problem (seeded, about a second).

Group 0 (majority, 450 training samples): the label is the sign of feature 0. Group 1 (minority, 50):
the label is the sign of feature 1 plus hidden noise, so it is also the harder group. The teacher
sees the hidden value and is right on both groups; the linear student sees only the two features and
cannot be right on both, so its weighting of the groups decides which one it sacrifices. Per-sample
KD (``kd_sample``) follows the majority; GroupDistil must move weight to the minority and lift the
held-out worst-group accuracy.
"""

import pytest
import torch

from trustmed.distill.config import LossConfig
from trustmed.distill.trainer import build_loss, group_accuracy

ETA = 0.05
STEPS = 300


def _groups(n0: int, n1: int, gen: torch.Generator, noise: float = 0.7):
    x0 = torch.randn(n0, 2, generator=gen)
    x1 = torch.randn(n1, 2, generator=gen)
    hidden = torch.cat([x0[:, 0], x1[:, 1] + noise * torch.randn(n1, generator=gen)])
    x = torch.cat([x0, x1])
    y = (hidden > 0).long()
    g = torch.cat([torch.zeros(n0), torch.ones(n1)]).long()
    teacher = torch.stack([-1.5 * hidden, 1.5 * hidden], dim=1)  # right on every sample
    return x, y, g, teacher


def _train(method: str, seed: int) -> tuple[float, list[float]]:
    """Held-out worst-group accuracy and the minority's weight after every step (``[]`` if none)."""
    gen = torch.Generator().manual_seed(seed)
    x, y, g, teacher = _groups(450, 50, gen)
    x_test, y_test, g_test, _ = _groups(2000, 2000, gen)
    torch.manual_seed(seed)
    student = torch.nn.Linear(2, 2)
    loss = build_loss(method, 2, LossConfig(eta=ETA))
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    minority_q = []
    for _ in range(STEPS):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        loss(student(x[idx]), y[idx], g[idx], teacher_logits=teacher[idx]).backward()
        opt.step()
        if hasattr(loss, "group_weights"):
            minority_q.append(float(loss.group_weights[1]))
    with torch.no_grad():
        pred = student(x_test).argmax(1).numpy()
    return group_accuracy(pred, y_test.numpy(), g_test.numpy(), 2)["acc_wg"], minority_q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groupdistil_upweights_the_minority_and_beats_per_sample_kd(seed):
    wg_gd, q = _train("groupdistil", seed)
    wg_sample, _ = _train("kd_sample", seed)
    # (a) the minority (worst) group's weight rises above uniform (0.5) and ends clearly above it
    assert max(q[:100]) > 0.6
    assert q[-1] > 0.55
    # (b) held-out worst-group accuracy: GroupDistil beats per-sample KD by a clear margin
    # (margins on seeds 0-4 were 0.12-0.19)
    assert wg_gd - wg_sample > 0.08


def test_kd_is_group_uniform():
    """``kd`` keeps the weights uniform (GroupDistil with eta = 0) and is not per-sample KD."""
    _, q = _train("kd", 0)
    assert q == pytest.approx([0.5] * STEPS)
    gen = torch.Generator().manual_seed(0)
    x, y, g, teacher = _groups(30, 6, gen)
    logits = torch.randn(36, 2, generator=gen)
    per_group = build_loss("kd", 2)(logits, y, g, teacher_logits=teacher)
    per_sample = build_loss("kd_sample", 2)(logits, y, g, teacher_logits=teacher)
    terms = [
        build_loss("kd_sample", 2)(logits[g == k], y[g == k], teacher_logits=teacher[g == k]) for k in (0, 1)
    ]
    torch.testing.assert_close(per_group, (terms[0] + terms[1]) / 2)
    assert float(per_group) != pytest.approx(float(per_sample))
