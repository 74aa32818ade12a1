"""SCORE ordering and pruning on small synthetic additive noise models."""

import numpy as np
import pytest

from trustmed.causal import full_dag_from_order, prune_order, score_order
from trustmed.data.synth.anm import make_latent_anm
from trustmed.errors import InputError
from trustmed.metrics.causal import order_divergence, shd


def test_score_order_beats_random_on_anms():
    ours, rand = [], []
    for seed in range(3):
        data = make_latent_anm(n=400, d=6, observed_dim=None, expected_edges=6, seed=seed)
        order = score_order(data.z)
        assert sorted(order) == list(range(6))
        ours.append(order_divergence(data.adjacency, order))
        rand.append(order_divergence(data.adjacency, np.random.default_rng(seed).permutation(6)))
    assert np.mean(ours) <= 1.0
    assert np.mean(ours) < np.mean(rand)


def test_chain_order_and_pruning():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    b = 1.5 * np.tanh(2 * a) + 0.4 * rng.normal(size=500)
    c = 1.5 * np.tanh(1.5 * b) + 0.4 * rng.normal(size=500)
    x = np.stack([c, a, b], axis=1)  # columns: c, a, b; true chain a -> b -> c
    order = score_order(x)
    assert order == [1, 2, 0]
    truth = np.zeros((3, 3), dtype=int)
    truth[1, 2] = truth[2, 0] = 1
    assert shd(truth, prune_order(x, order)) == 0
    assert shd(truth, full_dag_from_order(order)) == 1  # the spurious a -> c


def test_residual_criterion_orders_at_any_scale():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    b = 1.5 * np.tanh(2 * a) + 0.4 * rng.normal(size=500)
    c = 1.5 * np.tanh(1.5 * b) + 0.4 * rng.normal(size=500)
    x = np.stack([c, a, b], axis=1)  # true chain a -> b -> c
    assert score_order(x, criterion="residual") == [1, 2, 0]
    # Shrinking the leaf c makes its Hessian entry vary most: SCORE puts c first, the residual
    # criterion is unaffected.
    shrunk = x * np.array([0.05, 1.0, 1.0])
    assert score_order(shrunk)[0] == 0
    assert score_order(shrunk, criterion="residual") == [1, 2, 0]
    with pytest.raises(InputError, match="criterion"):
        score_order(x, criterion="variance")


def test_standardize_option_and_causallearn_pruning():
    rng = np.random.default_rng(1)
    a = rng.normal(size=300)
    b = np.tanh(2 * a) + 0.3 * rng.normal(size=300)
    c = rng.normal(size=300)
    x = np.stack([a, b, c], axis=1)
    assert sorted(score_order(x, standardize=True)) == [0, 1, 2]
    pruned = prune_order(x, [0, 2, 1], method="causallearn", ci_test="fisherz")
    assert pruned.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_bad_input():
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        score_order(x)
    with pytest.raises(InputError, match="too few"):
        score_order(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(InputError, match="permutation"):
        prune_order(np.ones((50, 3)), [0, 1])
    with pytest.raises(InputError, match="method"):
        prune_order(np.random.default_rng(0).normal(size=(50, 2)), [0, 1], method="pc")
