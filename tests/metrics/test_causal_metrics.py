"""Causal-representation metrics: MCC, R², order divergence, SHD."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from trustmed.causal import score_order
from trustmed.errors import InputError
from trustmed.metrics.causal import (
    causal_metrics,
    learned_order,
    match_latents,
    mcc,
    order_divergence,
    r2_linear,
    shd,
)


def test_mcc_is_invariant_to_permutation_sign_and_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 4))
    z_hat = z[:, [2, 0, 3, 1]] * [-2.0, 0.5, 3.0, -1.0] + 7.0
    assert mcc(z, z_hat) == pytest.approx(1.0)
    assert match_latents(z, z_hat)[0].tolist() == [1, 3, 0, 2]
    # Spearman also forgives monotone distortions, Pearson does not.
    warped = np.exp(z_hat)
    assert mcc(z, warped, method="spearman") == pytest.approx(1.0)
    assert mcc(z, warped, method="pearson") < 0.95
    assert mcc(z, rng.normal(size=(500, 4))) < 0.15


def test_hungarian_matching_is_optimal():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 4))
    z_hat = z @ rng.normal(size=(4, 5)) + rng.normal(size=(200, 5))
    corr = np.abs(np.corrcoef(z.T, z_hat.T)[:4, 4:])
    best = max(np.mean([corr[i, p[i]] for i in range(4)]) for p in itertools.permutations(range(5), 4))
    assert mcc(z, z_hat) == pytest.approx(best)


def test_r2_linear():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(400, 3))
    assert r2_linear(z, z @ rng.normal(size=(3, 3))) == pytest.approx(1.0)
    noisy = r2_linear(z, z + rng.normal(size=(400, 3)))
    assert noisy == pytest.approx(0.5, abs=0.08)  # var(z) / (var(z) + var(noise))


def test_order_divergence_and_shd_by_hand():
    # 0 -> 1, 0 -> 2, 1 -> 3
    a = np.zeros((4, 4), dtype=int)
    a[0, 1] = a[0, 2] = a[1, 3] = 1
    assert order_divergence(a, [0, 1, 2, 3]) == 0
    assert order_divergence(a, [3, 2, 1, 0]) == 3
    assert order_divergence(a, [1, 0, 3, 2]) == 1
    b = a.copy()
    b[1, 3], b[3, 1] = 0, 1  # reversal
    b[0, 2] = 0  # deletion
    b[2, 3] = 1  # addition
    assert shd(a, b) == 3
    assert shd(a, a) == 0
    assert learned_order(np.array([1, 0, 3, 2])) == [1, 0, 3, 2]
    with pytest.raises(InputError, match="permutation"):
        order_divergence(a, [0, 1, 2])


def test_causal_metrics_keys_and_bad_input():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 3))
    z[:, 1] += np.tanh(2 * z[:, 0])
    adj = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])
    out = causal_metrics(z, z[:, [1, 0, 2]], adj, order_fn=score_order)
    assert {"mcc_pearson", "mcc_spearman", "r2", "order_divergence", "order_divergence_score"} <= set(out)
    assert out["mcc_pearson"] == pytest.approx(1.0)
    assert out["order_divergence"] == 1  # learned index 0 holds z1, the child
    with pytest.raises(InputError, match="more than"):
        causal_metrics(z, z[:, :2])
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mcc(bad, z)


def test_order_divergence_score_needs_an_order_function():
    z = np.random.default_rng(4).normal(size=(100, 2))
    adj = np.array([[0, 1], [0, 0]])
    assert "order_divergence_score" not in causal_metrics(z, z, adj)
    assert causal_metrics(z, z, adj, order_fn=lambda x: [1, 0])["order_divergence_score"] == 1


def test_metrics_do_not_import_the_causal_methods():
    code = (
        "import sys, numpy as np; from trustmed.metrics.causal import causal_metrics; "
        "z = np.random.default_rng(0).normal(size=(50, 2)); causal_metrics(z, z, np.eye(2) * 0); "
        "print(sorted(m for m in sys.modules if m.startswith('trustmed.causal')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
