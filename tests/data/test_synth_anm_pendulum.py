"""Latent ANM and Pendulum generators: determinism, ground truth, files."""

import numpy as np
import pytest

from trustmed.data.synth.anm import load_anm, make_latent_anm, random_dag, save_anm
from trustmed.data.synth.pendulum import (
    PENDULUM_ADJACENCY,
    _shadow,
    make_pendulum,
    render_pendulum,
    save_pendulum,
)
from trustmed.errors import InputError


def test_anm_is_deterministic_and_consistent():
    a = make_latent_anm(n=300, d=5, observed_dim=12, seed=4)
    b = make_latent_anm(n=300, d=5, observed_dim=12, seed=4)
    c = make_latent_anm(n=300, d=5, observed_dim=12, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    position = {v: i for i, v in enumerate(a.order)}
    for i, j in zip(*np.nonzero(a.adjacency), strict=True):
        assert position[i] < position[j]  # the DAG respects the causal order
    assert np.linalg.matrix_rank(a.x - a.x.mean(0)) >= 5  # injective mixing keeps all latent directions
    roots = np.flatnonzero(a.adjacency.sum(0) == 0)
    for j in roots:  # roots are pure Gaussian noise with std in [0.4, 0.8]
        assert 0.3 < a.z[:, j].std() < 0.9


def test_anm_mechanisms_are_additive_noise():
    data = make_latent_anm(n=2000, d=3, observed_dim=None, expected_edges=3, seed=0)
    child = next(j for j in range(3) if data.adjacency[:, j].any())
    parents = np.flatnonzero(data.adjacency[:, child])
    from sklearn.ensemble import GradientBoostingRegressor

    fit = GradientBoostingRegressor(random_state=0).fit(data.z[:, parents], data.z[:, child])
    resid = data.z[:, child] - fit.predict(data.z[:, parents])
    assert 0.3 < resid.std() < 0.9  # the residual is the Gaussian noise
    assert abs(np.corrcoef(resid, data.z[:, parents[0]])[0, 1]) < 0.1


def test_random_dag_edge_count():
    counts = [random_dag(10, 10, np.random.default_rng(s))[0].sum() for s in range(30)]
    assert 8 < np.mean(counts) < 12


def test_save_and_load_roundtrip(tmp_path):
    data = make_latent_anm(n=50, d=3, observed_dim=6, seed=1)
    save_anm(data, tmp_path / "anm")
    assert sorted(p.name for p in (tmp_path / "anm").iterdir()) == [
        "adjacency.csv",
        "meta.json",
        "x.npy",
        "z.npy",
    ]
    back = load_anm(tmp_path / "anm")
    np.testing.assert_array_equal(back.x, data.x)
    np.testing.assert_array_equal(back.adjacency, data.adjacency)
    assert back.order == data.order
    with pytest.raises(InputError, match="x.npy"):
        load_anm(tmp_path / "missing")
    with pytest.raises(InputError, match="injective"):
        make_latent_anm(n=50, d=5, observed_dim=3)


def test_pendulum_ground_truth_and_rendering(tmp_path):
    data = make_pendulum(n=300, image_size=32, seed=0)
    again = make_pendulum(n=300, image_size=32, seed=0)
    np.testing.assert_array_equal(data.x, again.x)
    assert data.x.shape == (300, 1, 32, 32) and data.x.min() >= 0 and data.x.max() <= 1
    np.testing.assert_array_equal(data.adjacency, PENDULUM_ADJACENCY)
    angle, light, length, position = data.z.T
    # Shadows are the central projection from the light plus small Gaussian noise (std 0.02).
    geo_length, geo_position = _shadow(angle, light)
    assert 0.01 < np.std(position - geo_position) < 0.03
    assert np.corrcoef(length, geo_length)[0, 1] > 0.9
    assert np.corrcoef(position, light)[0, 1] < -0.5  # the light moves right, the shadow moves left
    # The dark shadow bar on the ground row is as wide as the shadow length.
    ground_row = data.x[:, 0, int(32 * (1 - 0.12)), :]
    dark_pixels = (ground_row < 0.1).sum(1)
    assert np.corrcoef(dark_pixels, length)[0, 1] > 0.8
    save_pendulum(data, tmp_path / "p")
    assert load_anm(tmp_path / "p").x.shape == (300, 1, 32, 32)
    with pytest.raises(InputError, match="shape"):
        render_pendulum(np.zeros((3, 2)))
