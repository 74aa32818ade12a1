"""Stein score / Hessian-diagonal estimators against an independent NumPy reference and closed forms."""

import numpy as np
import pytest
import torch

from trustmed.causal import nested_hessian_diag, stein_hessian_diag, stein_score
from trustmed.causal.stein import median_bandwidth
from trustmed.errors import InputError


def numpy_stein(x: np.ndarray, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """SCORE's Stein estimators written from the formula with explicit loops (float64)."""
    n, d = x.shape
    dist = np.array([[np.sqrt(((x[k] - x[i]) ** 2).sum()) for i in range(n)] for k in range(n)])
    s = np.median([dist[k, i] for k in range(n) for i in range(k + 1, n)])
    kern = np.exp(-(dist**2) / (2 * s**2)) / s
    nabla = np.zeros((n, d))
    nabla2 = np.zeros((n, d))
    for k in range(n):
        for j in range(d):
            nabla[k, j] = -sum((x[k, j] - x[i, j]) * kern[k, i] for i in range(n)) / s**2
            nabla2[k, j] = sum((-1 / s**2 + (x[k, j] - x[i, j]) ** 2 / s**4) * kern[k, i] for i in range(n))
    a = kern + eta * np.eye(n)
    grad = np.linalg.solve(a, nabla)
    return grad, -(grad**2) + np.linalg.solve(a, nabla2)


@pytest.mark.parametrize("eta", [1e-3, 0.1])
def test_agrees_with_numpy_reference_in_float64(eta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)) * [1.0, 2.0, 0.5] + 3.0
    ref_grad, ref_hess = numpy_stein(x, eta)
    xt = torch.as_tensor(x)
    np.testing.assert_allclose(stein_score(xt, eta).numpy(), ref_grad, rtol=0, atol=1e-8)
    np.testing.assert_allclose(stein_hessian_diag(xt, eta).numpy(), ref_hess, rtol=0, atol=1e-8)


def test_median_bandwidth_matches_numpy():
    x = np.random.default_rng(1).normal(size=(31, 2))
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(31, k=1)]
    assert float(median_bandwidth(torch.as_tensor(x))) == pytest.approx(np.median(dist), abs=1e-12)


def test_gaussian_closed_forms():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.5, 0.5], dtype=torch.float64)
    x = torch.randn(1000, 2, generator=g, dtype=torch.float64) * sigma
    hess = stein_hessian_diag(x).mean(0)
    expected = -1.0 / sigma**2  # H_jj = -1 / sigma_j^2
    assert torch.allclose(hess, expected, rtol=0.25)
    score = stein_score(x)
    slope = (score * x).sum(0) / (x * x).sum(0)  # score = -x / sigma^2
    assert torch.allclose(slope, expected, rtol=0.25)
    # Anisotropic: the wider coordinate has the flatter curvature, by about sigma^2 ratio 4.
    x2 = torch.randn(1000, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 2.0], dtype=torch.float64
    )
    h2 = stein_hessian_diag(x2).mean(0)
    assert 2.5 < float(h2[0] / h2[1]) < 5.0


def test_batched_float32_and_gradients():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 50, 4, generator=g, dtype=torch.float64)
    batched = stein_hessian_diag(x)
    for b in range(3):
        assert torch.allclose(batched[b], stein_hessian_diag(x[b]), atol=1e-10)
    h32 = stein_hessian_diag(x[0].float())
    assert h32.dtype == torch.float32
    assert torch.allclose(h32.double(), batched[0], rtol=1e-3, atol=1e-3)
    small = torch.randn(10, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: stein_hessian_diag(t, 0.1), (small,))


def test_nested_equals_each_prefix():
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nested = nested_hessian_diag(x)
    assert nested.shape == (3, 60, 4)
    for row, k in enumerate(range(2, 5)):
        assert torch.allclose(nested[row, :, :k], stein_hessian_diag(x[:, :k]), atol=1e-10)
        assert torch.all(nested[row, :, k:] == 0)


def test_bad_input():
    with pytest.raises(InputError, match="too few"):
        stein_hessian_diag(torch.randn(4, 2))
    x = torch.randn(20, 2)
    x[3, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        stein_score(x)
    with pytest.raises(InputError, match="ridge"):
        stein_hessian_diag(torch.randn(20, 2), eta=0.0)
    with pytest.raises(InputError, match="coincide"):
        stein_hessian_diag(torch.ones(20, 2))
