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
    # float32 rounding of the ill-conditioned system (eta = 1e-3) moves entries by about 1e-3
    # relative, a little more or less depending on the LAPACK (MKL or OpenBLAS) that solves it.
    assert torch.allclose(h32.double(), batched[0], rtol=5e-3, atol=5e-3)
    small = torch.randn(10, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: stein_hessian_diag(t, 0.1), (small,))


def test_nested_equals_each_prefix():
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nested = nested_hessian_diag(x)
    assert nested.shape == (3, 60, 4)
    for row, k in enumerate(range(2, 5)):
        assert torch.allclose(nested[row, :, :k], stein_hessian_diag(x[:, :k]), atol=1e-10)
        assert torch.all(nested[row, :, k:] == 0)


def autograd_nested(x: torch.Tensor, eta: float, min_prefix: int) -> torch.Tensor:
    """Prefix Hessian diagonals written directly from the formulas, differentiated by autograd.

    Independent of trustmed's kernels: full per-prefix distance matrices, the median of the pairs
    ``i < j`` through ``torch.sort``, and ``torch.linalg.solve``.
    """
    n, d = x.shape
    rows = []
    for k in range(min_prefix, d + 1):
        xk = x[:, :k]
        diff = xk[:, None, :] - xk[None, :, :]  # (n, n, k)
        sq = (diff * diff).sum(-1)
        i, j = torch.triu_indices(n, n, 1)
        pairs = sq[i, j].sqrt().sort().values
        m = len(pairs)
        s = 0.5 * (pairs[(m - 1) // 2] + pairs[m // 2])
        kern = torch.exp(-sq / (2 * s**2)) / s
        nabla = -(diff * kern[..., None]).sum(1) / s**2
        nabla2 = ((-1 / s**2 + diff**2 / s**4) * kern[..., None]).sum(1)
        a = kern + eta * torch.eye(n, dtype=x.dtype)
        grad = torch.linalg.solve(a, nabla)
        hess = torch.linalg.solve(a, nabla2) - grad**2
        rows.append(torch.cat([hess, torch.zeros(n, d - k, dtype=x.dtype)], dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize(("n", "d", "min_prefix"), [(128, 5, 2), (21, 3, 1), (30, 4, 4)])
def test_nested_hand_written_backward_matches_autograd(n, d, min_prefix):
    g = torch.Generator().manual_seed(n + d)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(
        0.3, 2.0, d, dtype=torch.float64
    )
    upstream = torch.randn(d - min_prefix + 1, n, d, generator=g, dtype=torch.float64)
    grads = []
    for fn in (nested_hessian_diag, autograd_nested):
        x = x0.clone().requires_grad_(True)
        out = fn(x, 1e-3, min_prefix=min_prefix) if fn is nested_hessian_diag else fn(x, 1e-3, min_prefix)
        (out * upstream).sum().backward()
        grads.append((out.detach(), x.grad))
    (ours, ours_grad), (ref, ref_grad) = grads
    assert torch.allclose(ours, ref, rtol=1e-8, atol=1e-8)
    assert torch.allclose(ours_grad, ref_grad, rtol=1e-8, atol=1e-8 * float(ref_grad.abs().max()))
    small = torch.randn(11, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: nested_hessian_diag(t, 0.1, min_prefix=1), (small,))


def test_torch_fallbacks_agree_with_the_host_paths(monkeypatch):
    """The kthvalue median and torch's Cholesky/LU (used off CPU) give the CPU path's numbers."""
    from trustmed.causal import stein

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    host = (median_bandwidth(x), stein_hessian_diag(x), nested_hessian_diag(x))
    monkeypatch.setattr(stein, "_on_host", lambda t: False)
    off = (median_bandwidth(x), stein_hessian_diag(x), nested_hessian_diag(x))
    for a, b in zip(host, off, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    # an indefinite system falls back to an LU solve, on either path
    kernel = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64))
    rhs = torch.randn(3, 2, dtype=torch.float64)
    for on_host in (True, False):
        monkeypatch.setattr(stein, "_on_host", lambda t, v=on_host: v)
        factor = stein._RidgeFactor(kernel, 1e-3)
        expected = torch.linalg.solve(kernel + 1e-3 * torch.eye(3, dtype=torch.float64), rhs)
        assert torch.allclose(factor.solve(rhs), expected, atol=1e-12)


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


def numpy_residual_leafness(x: np.ndarray, eta: float, n_basis: int, ridge: float) -> np.ndarray:
    """The criterion from its definition: explicit leave-one-out refits, one prefix and column at a time."""
    n, d = x.shape
    xs = (x - x.mean(0)) / x.std(0)
    centres = np.linspace(-2, 2, n_basis)
    width = 4 / (n_basis - 1)
    out = np.full((d - 1, d), np.nan)
    for k in range(2, d + 1):
        score = stein_score(torch.as_tensor(xs[:, :k]), eta).numpy()
        for j in range(k):
            rest = [c for c in range(k) if c != j]
            bumps = np.exp(-((xs[:, rest, None] - centres) ** 2) / (2 * width**2)).reshape(n, -1)
            design = np.hstack([np.ones((n, 1)), bumps])
            resid = np.empty(n)
            for i in range(n):  # refit without sample i, predict it
                keep = np.arange(n) != i
                a, b = design[keep], xs[keep, j]
                gram = a.T @ a + ridge * n * np.eye(design.shape[1])  # the full sample's penalty
                resid[i] = xs[i, j] - design[i] @ np.linalg.solve(gram, a.T @ b)
            out[k - 2, j] = 1 - np.corrcoef(score[:, j], resid)[0, 1] ** 2
    return out


def test_residual_leafness_matches_its_definition():
    from trustmed.causal.stein import nested_residual_leafness

    x = np.random.default_rng(0).normal(size=(40, 3))
    x[:, 2] += np.tanh(2 * x[:, 0])
    got = nested_residual_leafness(torch.as_tensor(x), 1e-3, n_basis=5, ridge=0.05).numpy()
    expected = numpy_residual_leafness(x, 1e-3, 5, 0.05)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)
    assert np.isnan(got[0, 2]) and np.isfinite(got[1]).all()


def test_residual_leafness_is_scale_free_finds_the_leaf_and_has_gradients():
    from trustmed.causal.stein import nested_residual_leafness

    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, generator=g, dtype=torch.float64)
    b = torch.sin(2 * a) + 0.5 * torch.randn(300, generator=g, dtype=torch.float64)
    c = torch.tanh(1.5 * b) + 0.3 * a + 0.4 * torch.randn(300, generator=g, dtype=torch.float64)
    x = torch.stack([a, b, c], 1)  # the chain a -> b -> c, c the leaf
    crit = nested_residual_leafness(x)
    assert int(crit[1].argmin()) == 2 and int(crit[0, :2].argmin()) == 1  # nan beyond the prefix
    rescaled = nested_residual_leafness(x * torch.tensor([3.0, -0.01, 50.0], dtype=torch.float64) + 7)
    torch.testing.assert_close(rescaled, crit, equal_nan=True, rtol=0, atol=1e-9)
    # The Hessian-variance criterion is not scale-free: shrinking the leaf hides it.
    var = nested_hessian_diag(x * torch.tensor([1.0, 1.0, 0.2], dtype=torch.float64)).var(1)
    assert int(var[1].argmin()) != 2

    small = x[:24].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: nested_residual_leafness(t, n_basis=4).nan_to_num(), (small,))
    with pytest.raises(InputError, match="n_dims >= 2"):
        nested_residual_leafness(torch.randn(20, 1))
    with pytest.raises(InputError, match="ridge"):
        nested_residual_leafness(torch.randn(20, 2), ridge=0.0)
    with pytest.raises(InputError, match="n_basis"):
        nested_residual_leafness(torch.randn(20, 2), n_basis=1)
