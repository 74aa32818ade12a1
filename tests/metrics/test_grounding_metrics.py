"""Grounding metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from trustmed.metrics.grounding import (
    auroc,
    caption_flip_shift,
    cnr,
    laterality_accuracy,
    laterality_correct,
    miou,
    pair_metrics,
    pointing_game,
    summarize,
)


def _box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_auroc_matches_sklearn_and_ignores_nan():
    rng = np.random.default_rng(0)
    h = rng.random((20, 20))
    m = _box(h.shape, 3, 9, 4, 12)
    h[m] += 0.3
    assert auroc(h, m) == pytest.approx(roc_auc_score(m.ravel(), h.ravel()))
    h_nan = h.copy()
    h_nan[:, :2] = np.nan
    keep = np.isfinite(h_nan)
    assert auroc(h_nan, m) == pytest.approx(roc_auc_score(m[keep], h_nan[keep]))
    assert np.isnan(auroc(h, np.zeros_like(m)))


def test_miou_threshold_average_by_hand():
    h = np.array([[0.0, 0.15, 0.35, 1.0]])
    m = np.array([[False, False, True, True]])
    # τ=0.1: pred {1,2,3} → 2/3; τ=0.2,0.3: {2,3} → 1; τ=0.4,0.5: {3} → 1/2
    assert miou(h, m) == pytest.approx((2 / 3 + 1 + 1 + 0.5 + 0.5) / 5)
    assert miou(h * 7 + 3, m) == pytest.approx(miou(h, m))  # min-max normalised
    assert miou(np.ones((1, 4)), m) == pytest.approx(0.5)  # a uniform map predicts everywhere: |M| / N


def test_cnr_by_hand_and_per_box_mean():
    h = np.zeros((4, 4))
    h[0, 0], h[0, 1] = 1.0, 0.5
    b1, b2 = _box(h.shape, 0, 1, 0, 1), _box(h.shape, 0, 1, 1, 2)
    out1 = h[~b1]
    expected1 = abs(1.0 - out1.mean()) / np.sqrt(0 + out1.var())
    out2 = h[~b2]
    expected2 = abs(0.5 - out2.mean()) / np.sqrt(0 + out2.var())
    assert cnr(h, [b1, b2]) == pytest.approx((expected1 + expected2) / 2)
    h_nan = h.copy()
    h_nan[3, 3] = np.nan
    assert np.isfinite(cnr(h_nan, b1))


def test_pointing_game_and_laterality():
    h = np.zeros((6, 6))
    h[1, 4] = 5
    right, left = _box(h.shape, 0, 3, 0, 3), _box(h.shape, 0, 3, 3, 6)
    assert pointing_game(h, left) == 1.0 and pointing_game(h, right) == 0.0
    assert laterality_correct(h, left, right) == 1.0 and laterality_correct(h, right, left) == 0.0
    assert laterality_accuracy([h, h], [left, right], [right, left]) == 0.5
    assert caption_flip_shift([0.4, 0.2], [0.3, 0.3]) == pytest.approx(0.0)
    metrics = pair_metrics(h, [left])
    assert set(metrics) == {"cnr", "miou", "auroc", "pointing_game"}


def test_summarize_macro_micro_and_bootstrap_ci():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "category": ["a"] * 80 + ["b"] * 20,
            "miou": np.r_[rng.normal(0.2, 0.05, 80), rng.normal(0.6, 0.05, 20)],
        }
    )
    r = summarize(table, metrics=["miou"], n_boot=400, seed=1)
    a, b = table.miou[:80].mean(), table.miou[80:].mean()
    assert r["overall"]["miou"]["value"] == pytest.approx(table.miou.mean())
    assert r["macro"]["miou"]["value"] == pytest.approx((a + b) / 2)
    assert r["macro"]["miou"]["std"] == pytest.approx(np.std([a, b]))
    assert r["classes"]["a"]["n"] == 80 and r["classes"]["b"]["miou"]["value"] == pytest.approx(b)
    lo, hi = r["overall"]["miou"]["ci"]
    se = table.miou.std() / np.sqrt(100)
    assert lo < table.miou.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert summarize(table, metrics=["miou"], n_boot=400, seed=1) == r
    assert "ci" not in summarize(table, metrics=["miou"], n_boot=0)["overall"]["miou"]


def test_summarize_warns_for_undefined_class():
    table = pd.DataFrame({"category": ["a", "b"], "auroc": [0.7, np.nan]})
    r = summarize(table, metrics=["auroc"], n_boot=10)
    assert r["overall"]["auroc"]["value"] == pytest.approx(0.7)
    assert any("'b'" in w for w in r["warnings"])
