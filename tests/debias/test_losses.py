"""The losses of post-hoc debiasing: WBCE formula, soft proxies = hard gaps on 0/1 scores, K >= 2."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairlearn.metrics import (
    demographic_parity_difference,
    equalized_odds_difference,
    true_positive_rate_difference,
)

from trustmed.debias.losses import bias_loss, bias_loss_from_probs, soft_rate_gaps, wbce
from trustmed.metrics.fairness import fairness_report


def _data(seed: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    g = rng.integers(0, k, n)
    pred = rng.integers(0, 2, n)
    return y, g, pred


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_proxies_equal_hard_gaps_on_binary_scores(k, seed):
    y, g, pred = _data(seed, 200, k)
    t = {name: torch.as_tensor(v) for name, v in (("y", y), ("g", g), ("p", pred))}
    probs = t["p"].float()
    eodds = float(bias_loss_from_probs(probs, t["y"].float(), t["g"], kind="eodds"))
    eopp = float(bias_loss_from_probs(probs, t["y"].float(), t["g"], kind="eopp"))
    dp = float(bias_loss_from_probs(probs, t["y"].float(), t["g"], kind="dp"))
    assert eodds == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=g, agg="mean"), abs=1e-6
    )
    assert eopp == pytest.approx(true_positive_rate_difference(y, pred, sensitive_features=g), abs=1e-6)
    assert dp == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=g), abs=1e-6)
    report = fairness_report(y, pred.astype(float), groups=g.astype(str), n_boot=0)
    assert eodds == pytest.approx(report["gaps"]["eodds_mean_gap"]["value"], abs=1e-6)
    assert eopp == pytest.approx(report["gaps"]["eopp_tpr_gap"]["value"], abs=1e-6)
    assert dp == pytest.approx(report["gaps"]["dp_gap"]["value"], abs=1e-6)


def test_logit_version_is_sigmoid_of_probs_and_differentiable():
    y, g, _ = _data(3, 64, 3)
    logits = torch.randn(64, requires_grad=True)
    loss = bias_loss(logits, torch.as_tensor(y).float(), torch.as_tensor(g), kind="eodds")
    ref = bias_loss_from_probs(torch.sigmoid(logits), torch.as_tensor(y).float(), torch.as_tensor(g))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()))
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_groups_without_a_cell_are_left_out():
    probs = torch.tensor([0.9, 0.1, 0.2, 0.4])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1])  # group 1 has no positives, group 0 no negatives
    gaps = soft_rate_gaps(probs, y, g)
    assert float(gaps["tpr"]) == 0.0 and float(gaps["fpr"]) == 0.0
    assert float(gaps["sr"]) == pytest.approx(0.5 - 0.3)


def test_wbce_matches_its_formula():
    torch.manual_seed(0)
    logits = torch.randn(50)
    y = (torch.rand(50) < 0.3).float()
    n_pos, n = float(y.sum()), 50
    n_neg = n - n_pos
    p = torch.sigmoid(logits)
    per_sample = -(n_neg / n_pos) * y * torch.log(p) - (1 - y) * torch.log(1 - p)
    expected = n_pos / n * per_sample.mean()
    assert float(wbce(logits, y)) == pytest.approx(float(expected), rel=1e-5)
    # Equivalent to a class-balanced loss: both classes weigh the same in total.
    balanced = (
        n_pos
        * n_neg
        / n**2
        * (
            F.binary_cross_entropy_with_logits(logits[y == 1], y[y == 1])
            + F.binary_cross_entropy_with_logits(logits[y == 0], y[y == 0])
        )
    )
    assert float(wbce(logits, y)) == pytest.approx(float(balanced), rel=1e-5)


def test_wbce_single_class_batch_falls_back_to_bce():
    logits = torch.tensor([0.3, -1.0])
    y = torch.ones(2)
    assert float(wbce(logits, y)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, y)))
