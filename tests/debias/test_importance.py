"""Fisher importances and SWiFT's soft mask, checked against hand-derived gradients of a tiny model."""

import numpy as np
import pytest
import torch
from torch import nn

from trustmed.debias.data import GroupedSet
from trustmed.debias.importance import fisher_importance, hard_mask, minmax_normalise, soft_mask
from trustmed.debias.swift import SWiFT
from trustmed.models import Classifier

X = np.array(
    [[1.0, 0.5], [0.2, -1.0], [-0.7, 0.3], [0.9, 0.9], [-1.2, 0.4], [0.3, 0.8], [0.5, -0.6], [-0.2, -0.9]]
)
Y = np.array([1, 0, 1, 0, 1, 1, 0, 0])
G = np.array([0, 0, 1, 1, 0, 1, 0, 1])
A = np.array([[0.8, -0.3], [0.4, 0.6]])  # extractor weight (2 features x 2 inputs), no bias
H = np.array([0.7, -0.5])  # head weight
C = 0.1  # head bias


def _tiny_model() -> Classifier:
    extractor = nn.Linear(2, 2, bias=False)
    head = nn.Linear(2, 1)
    with torch.no_grad():
        extractor.weight.copy_(torch.tensor(A))
        head.weight.copy_(torch.tensor(H).view(1, 2))
        head.bias.fill_(C)
    return Classifier(extractor, head)


def _dlogit_wbce(z, y):
    p = 1 / (1 + np.exp(-z))
    n, n_pos = len(y), y.sum()
    n_neg = n - n_pos
    return (n_pos / n) / n * ((n_neg / n_pos) * y * (p - 1) + (1 - y) * p)


def _dlogit_eodds(z, y, g):
    """d/dz of ½(|TPR_0 − TPR_1| + |FPR_0 − FPR_1|) with soft rates, two groups."""
    p = 1 / (1 + np.exp(-z))
    out = np.zeros_like(z)
    for label in (1, 0):
        cells = [(y == label) & (g == k) for k in (0, 1)]
        rates = [p[c].mean() for c in cells]
        sign = np.sign(rates[0] - rates[1])
        for k, c in enumerate(cells):
            out[c] += 0.5 * sign * (1 if k == 0 else -1) * p[c] * (1 - p[c]) / c.sum()
    return out


def _hand_fisher(dlogit):
    """Mean over the two batches of 4 of the squared gradients, for A, h, c."""
    sums = {"extractor.weight": np.zeros((2, 2)), "head.weight": np.zeros((1, 2)), "head.bias": np.zeros(1)}
    for b in (slice(0, 4), slice(4, 8)):
        x = X[b]
        feats = x @ A.T
        z = feats @ H + C
        d = dlogit(z, b)
        grads = {
            "extractor.weight": np.einsum("i,j,ik->jk", d, H, x),
            "head.weight": (d @ feats).reshape(1, 2),
            "head.bias": np.array([d.sum()]),
        }
        for k in sums:
            sums[k] += grads[k] ** 2
    return {k: v / 2 for k, v in sums.items()}


def _minmax(t):
    return (t - t.min()) / (t.max() - t.min() + 1e-10)


def test_fisher_and_soft_mask_match_hand_computation():
    data = GroupedSet(torch.tensor(X).view(8, 2), Y, G.astype(str), attribute="a")
    swift = SWiFT(bias_loss="eodds", batch_size=4, unlearn_epochs=0, n_epochs=0).fit(_tiny_model(), data)
    i_pred = _hand_fisher(lambda z, b: _dlogit_wbce(z, Y[b]))
    i_bias = _hand_fisher(lambda z, b: _dlogit_eodds(z, Y[b], G[b]))
    for name in i_pred:
        np.testing.assert_allclose(swift.pred_importance_[name].numpy(), i_pred[name], rtol=1e-4, atol=1e-10)
        np.testing.assert_allclose(swift.bias_importance_[name].numpy(), i_bias[name], rtol=1e-4, atol=1e-10)
        expected = np.tanh(_minmax(i_bias[name]) / (_minmax(i_pred[name]) + 1e-10))
        mask = swift.mask_[name].numpy()
        np.testing.assert_allclose(mask, expected, rtol=1e-3, atol=1e-5)
        assert (mask >= 0).all() and (mask < 1).all()
    # A tensor with a single entry normalises to 0, so its mask is 0.
    assert float(swift.mask_["head.bias"][0]) == 0.0


def test_minmax_and_soft_mask_extremes():
    t = torch.tensor([2.0, 4.0, 6.0])
    assert minmax_normalise(t).tolist() == pytest.approx([0.0, 0.5, 1.0])
    masks = soft_mask({"w": torch.tensor([0.0, 5.0, 10.0])}, {"w": torch.tensor([10.0, 5.0, 0.0])})
    m = masks["w"]
    assert float(m[0]) == 0.0  # no bias importance: frozen
    assert float(m[1]) == pytest.approx(np.tanh(1.0), rel=1e-6)
    assert 0.999 < float(m[2]) < 1.0  # bias-only importance: ~1 but never exactly 1


def test_hard_mask_is_bmft_global_threshold_on_normalised_ratio_without_head():
    bias = {
        "extractor.a": torch.tensor([0.0, 1.0, 2.0, 4.0]),  # normalised: 0, .25, .5, 1
        "extractor.b": torch.tensor([0.0, 6.0, 10.0, 3.0]),  # normalised: 0, .6, 1, .3
        "head.weight": torch.tensor([0.0, 100.0]),  # normalised: 0, 1
    }
    pred = {
        "extractor.a": torch.tensor([0.0, 2.0, 1.0, 4.0]),  # normalised: 0, .5, .25, 1
        "extractor.b": torch.tensor([0.0, 10.0, 10.0, 5.0]),  # normalised: 0, 1, 1, .5
        "head.weight": torch.tensor([1.0, 0.0]),  # normalised: 1, 0 -> ratio 1e10 if it counted
    }
    # ratios: a = [0, .5, 2, 1], b = [0, .6, 1, .6]; one threshold over the 8 non-head entries:
    # (3.5 + 2.2) / 8 = 0.7125. A mean per tensor (b: 0.55) would keep b's .6 entries; counting
    # the head would push the threshold to ~1e9 and mask nothing.
    masks = hard_mask(bias, pred)
    assert set(masks) == {"extractor.a", "extractor.b"}
    assert masks["extractor.a"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert masks["extractor.b"].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_fisher_leaves_model_state_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(8, 3) for _ in range(3)]
    imp = fisher_importance(model, batches, lambda m, b: m(b).pow(2).mean())
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert set(imp) == {n for n, _ in model.named_parameters()}
    assert all((v >= 0).all() for v in imp.values())
