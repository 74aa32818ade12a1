"""Stein estimators of the score and of the diagonal of the Hessian of the log-density.

The estimators are those of SCORE, "Score matching enables causal discovery of nonlinear additive
noise models" (Rolland et al., ICML 2022, arXiv 2203.04413), built on the Stein gradient estimator
of Li & Turner, "Gradient estimators for implicit models" (ICLR 2018, arXiv 1705.07107). With the
Gaussian kernel ``K_ki = exp(-||x_k - x_i||^2 / 2s^2) / s`` (``s`` = median pairwise distance) and a
ridge ``eta``:

``G = (K + eta I)^-1 nabla K``          (score, ``G_kj ~ d log p(x_k) / d x_j``)
``H = -G * G + (K + eta I)^-1 nabla^2 K``  (Hessian diagonal, ``H_kj ~ d^2 log p(x_k) / d x_j^2``)

with ``(nabla K)_kj = -sum_i (x_kj - x_ij) K_ki / s^2`` and
``(nabla^2 K)_kj = sum_i (-1/s^2 + (x_kj - x_ij)^2 / s^4) K_ki``. Both kernel sums are written as
matrix products (``K @ x`` and ``K @ x**2``) and the two linear systems share one Cholesky
factorisation, so the estimators are fast, batched over leading dimensions, differentiable, and run in
float32 or float64 on any device.

:func:`nested_hessian_diag` evaluates the Hessian diagonal for every leading sub-vector
``x[..., :k]`` at once: the squared distances of all prefixes are cumulative sums of the per-coordinate
squared differences, and the ``d - 1`` systems are factorised in one batched Cholesky call. This is the
quantity the ordering loss of coVAE needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustmed.errors import InputError

__all__ = [
    "MIN_SAMPLES",
    "median_bandwidth",
    "stein_score",
    "stein_hessian_diag",
    "nested_hessian_diag",
]

MIN_SAMPLES = 8
"""Fewest samples the kernel estimate accepts (the median bandwidth and the solve need a few)."""


def _check(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise InputError(f"{name}: expected shape (..., n_samples, n_dims), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    n, d = x.shape[-2], x.shape[-1]
    if n < MIN_SAMPLES:
        raise InputError(
            f"{name}: {n} samples are too few for the Stein kernel estimate; need at least {MIN_SAMPLES}"
        )
    if d < 1:
        raise InputError(f"{name}: expected at least one dimension, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: contains NaN or infinite values")


def _pairwise_sq(x: Tensor) -> Tensor:
    """Squared distances ``||x_k - x_i||^2``, shape ``(..., n, n)``, on centred data for accuracy."""
    xc = x - x.mean(dim=-2, keepdim=True)
    norms = (xc * xc).sum(-1)
    sq = norms[..., :, None] + norms[..., None, :] - 2.0 * xc @ xc.transpose(-1, -2)
    return _zero_diagonal(sq.clamp_min(0.0))


def _zero_diagonal(sq: Tensor) -> Tensor:
    n = sq.shape[-1]
    return sq.masked_fill(torch.eye(n, dtype=torch.bool, device=sq.device), 0.0)


def _bandwidth_from_sq(sq: Tensor) -> Tensor:
    """Median distance between distinct samples, from squared distances with a zero diagonal.

    The ``n`` zeros of the diagonal sort first and every off-diagonal pair appears twice, so the
    median of the ``n (n - 1) / 2`` pairs is the mean of the two middle off-diagonal entries of the
    flattened matrix; two linear-time selections find them without a sort.
    """
    n = sq.shape[-1]
    flat = sq.flatten(-2)
    middle = n + n * (n - 1) // 2  # 1-based rank of the lower middle off-diagonal entry
    low = flat.kthvalue(middle, dim=-1).values
    high = flat.kthvalue(middle + 1, dim=-1).values
    s = 0.5 * (low.clamp_min(0.0).sqrt() + high.clamp_min(0.0).sqrt())
    if not bool((s > 0).all()):
        raise InputError("x: all samples coincide, so the median-distance kernel width is zero")
    return s


def median_bandwidth(x: Tensor) -> Tensor:
    """Median of the pairwise Euclidean distances between distinct samples, shape ``x.shape[:-2]``.

    >>> x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0], [15.0], [21.0], [28.0]])
    >>> float(median_bandwidth(x))
    10.5
    """
    _check(x)
    return _bandwidth_from_sq(_pairwise_sq(x))


def _stein_terms(x: Tensor, sq: Tensor, s: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Solve ``(K + eta I)^-1 [nabla K, nabla^2 K]`` for kernel distances ``sq`` and width ``s``.

    ``x`` has shape ``(..., n, d)``, ``sq`` and the kernel ``(..., n, n)``, ``s`` shape ``(...)``.
    """
    s2 = (s * s)[..., None, None]
    kernel = torch.exp(-sq / (2.0 * s2)) / s[..., None, None]
    xc = x - x.mean(dim=-2, keepdim=True)
    rowsum = kernel.sum(-1, keepdim=True)
    n, d = x.shape[-2], x.shape[-1]
    kx, kx2 = (kernel @ torch.cat([xc, xc * xc], dim=-1)).split(d, dim=-1)
    nabla = -(xc * rowsum - kx) / s2
    nabla2 = -rowsum / s2 + (xc * xc * rowsum - 2.0 * xc * kx + kx2) / (s2 * s2)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    system = kernel + eta * eye
    rhs = torch.cat([nabla, nabla2], dim=-1)
    factor, info = torch.linalg.cholesky_ex(system)
    # Rounding can make K + eta I indefinite (float32, tiny eta): then fall back to an LU solve.
    positive = bool((info == 0).all())
    sol = torch.cholesky_solve(rhs, factor) if positive else torch.linalg.solve(system, rhs)
    return sol[..., :d], sol[..., d:]


def _check_eta(eta: float) -> None:
    if not eta > 0:
        raise InputError(f"eta: the ridge must be positive, got {eta}")


def stein_score(x: Tensor, eta: float = 1e-3, *, bandwidth: Tensor | float | None = None) -> Tensor:
    """Stein estimate of the score ``grad log p`` at every sample.

    Parameters
    ----------
    x : Tensor, shape ``(..., n, d)``
        Samples; leading dimensions are independent batches.
    eta : float
        Ridge added to the kernel matrix.
    bandwidth : optional
        Kernel width ``s``; the median pairwise distance when omitted.

    Returns
    -------
    Tensor, shape ``(..., n, d)``

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(400, 1, generator=g, dtype=torch.float64)
    >>> score = stein_score(x)
    >>> slope = float((score * x).sum() / (x * x).sum())  # the score of N(0, 1) is -x
    >>> -1.3 < slope < -0.7
    True
    """
    _check(x)
    _check_eta(eta)
    sq = _pairwise_sq(x)
    s = _bandwidth_from_sq(sq) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype)
    grad, _ = _stein_terms(x, sq, s.to(x.device), eta)
    return grad


def stein_hessian_diag(x: Tensor, eta: float = 1e-3, *, bandwidth: Tensor | float | None = None) -> Tensor:
    """Stein estimate of the diagonal of the Hessian of ``log p`` at every sample.

    Parameters
    ----------
    x : Tensor, shape ``(..., n, d)``
        Samples; leading dimensions are independent batches.
    eta : float
        Ridge added to the kernel matrix.
    bandwidth : optional
        Kernel width ``s``; the median pairwise distance when omitted.

    Returns
    -------
    Tensor, shape ``(..., n, d)``: ``H[..., k, j] ~ d^2 log p(x_k) / d x_j^2``.

    Examples
    --------
    For a Gaussian, ``H_jj = -1 / sigma_j^2``:

    >>> g = torch.Generator().manual_seed(0)
    >>> sigma = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> x = torch.randn(1000, 2, generator=g, dtype=torch.float64) * sigma
    >>> h = stein_hessian_diag(x).mean(0)
    >>> [round(float(v), 1) for v in h * sigma**2]
    [-1.1, -1.3]
    """
    _check(x)
    _check_eta(eta)
    sq = _pairwise_sq(x)
    s = _bandwidth_from_sq(sq) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype)
    grad, second = _stein_terms(x, sq, s.to(x.device), eta)
    return second - grad * grad


def nested_hessian_diag(x: Tensor, eta: float = 1e-3, *, min_prefix: int = 2) -> Tensor:
    """Hessian diagonals of every leading sub-vector ``x[:, :k]``, ``k = min_prefix .. d``, in one go.

    Each prefix gets its own median kernel width, exactly as :func:`stein_hessian_diag` would give
    it; the prefix distances are cumulative sums of per-coordinate squared differences and the
    systems are solved in one batched Cholesky call.

    Parameters
    ----------
    x : Tensor, shape ``(n, d)``
    eta : float
        Ridge added to the kernel matrix.
    min_prefix : int
        Smallest prefix length.

    Returns
    -------
    Tensor, shape ``(d - min_prefix + 1, n, d)``: row ``k - min_prefix`` holds the Hessian diagonal of
    ``x[:, :k]`` in its first ``k`` columns and zeros after.

    Examples
    --------
    >>> x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    >>> nested = nested_hessian_diag(x)
    >>> torch.allclose(nested[0, :, :2], stein_hessian_diag(x[:, :2]))
    True
    """
    _check(x)
    _check_eta(eta)
    if x.ndim != 2:
        raise InputError(f"x: expected shape (n_samples, n_dims), got {tuple(x.shape)}")
    n, d = x.shape
    if not 1 <= min_prefix <= d:
        raise InputError(f"min_prefix: expected 1..{d} for {d} dimensions, got {min_prefix}")
    xc = x - x.mean(dim=0, keepdim=True)
    per_dim = (xc[:, None, :] - xc[None, :, :]).pow(2)  # (n, n, d)
    sq = _zero_diagonal(per_dim.cumsum(dim=-1)[..., min_prefix - 1 :].permute(2, 0, 1))  # (p, n, n)
    s = _bandwidth_from_sq(sq)
    grad, second = _stein_terms(x.expand(sq.shape[0], n, d), sq, s, eta)
    ks = torch.arange(min_prefix, d + 1, device=x.device)
    inside = (torch.arange(d, device=x.device)[None, :] < ks[:, None]).to(x.dtype)  # (p, d)
    return (second - grad * grad) * inside[:, None, :]
