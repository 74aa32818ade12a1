"""Stein estimators of the score and of the diagonal of the Hessian of the log-density.

The estimators are those of SCORE, "Score matching enables causal discovery of nonlinear additive
noise models" (Rolland et al., ICML 2022, arXiv 2203.04413), built on the Stein gradient estimator
of Li & Turner, "Gradient estimators for implicit models" (ICLR 2018, arXiv 1705.07107). With the
Gaussian kernel ``K_ki = exp(-||x_k - x_i||^2 / 2s^2) / s`` (``s`` = median pairwise distance) and a
ridge ``eta``:

``G = (K + eta I)^-1 nabla K``          (score, ``G_kj ~ d log p(x_k) / d x_j``)
``H = -G * G + (K + eta I)^-1 nabla^2 K``  (Hessian diagonal, ``H_kj ~ d^2 log p(x_k) / d x_j^2``)

with ``(nabla K)_kj = -sum_i (x_kj - x_ij) K_ki / s^2`` and
``(nabla^2 K)_kj = sum_i (-1/s^2 + (x_kj - x_ij)^2 / s^4) K_ki``. The kernel sums are one matrix
product (``K @ [1, x, x**2]``) and the two linear systems share one Cholesky factorisation (SciPy's
LAPACK for small CPU systems, torch otherwise), so the estimators are fast, batched over leading
dimensions, differentiable, and run in float32 or float64 on any device.

:func:`nested_hessian_diag` evaluates the Hessian diagonal for every leading sub-vector
``x[..., :k]`` at once: the squared distances of all prefixes are prefix sums of the exact
per-coordinate squared differences (one matrix product), each prefix gets its own median width, the
``d - 1`` systems are factorised together, and the backward pass is written by hand (autograd's graph
of some sixty small nodes cost more than the arithmetic at coVAE's batch size). This is the quantity
the ordering loss of coVAE needs.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg.lapack
import torch
from torch import Tensor

from trustmed.errors import InputError

__all__ = [
    "MIN_SAMPLES",
    "LEAF_CRITERIA",
    "median_bandwidth",
    "stein_score",
    "stein_hessian_diag",
    "nested_hessian_diag",
    "nested_residual_leafness",
]

MIN_SAMPLES = 8
"""Fewest samples the kernel estimate accepts (the median bandwidth and the solve need a few)."""

LEAF_CRITERIA = ("hessian", "residual")
"""Leaf criteria of SCORE ordering and of coVAE's ordering loss: ``Var[H_jj]`` or
:func:`nested_residual_leafness`."""


def check_leaf_criterion(criterion: str) -> None:
    """Refuse a name that is not in :data:`LEAF_CRITERIA`."""
    if criterion not in LEAF_CRITERIA:
        raise InputError(f"criterion: expected one of {', '.join(LEAF_CRITERIA)}, got {criterion!r}")


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


def _on_host(t: Tensor) -> bool:
    """True for CPU float32/float64 tensors, which NumPy and SciPy handle without a copy."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


@functools.lru_cache(maxsize=8)
def _upper_index(n: int) -> Tensor:
    """Flat indices ``i * n + j`` of the pairs ``i < j`` of an ``(n, n)`` matrix (CPU, cached)."""
    rows, cols = torch.triu_indices(n, n, 1)
    return rows * n + cols


def _median_pairs(sq: Tensor) -> Tensor:
    """Flat indices into ``sq.flatten(-2)`` of the two middle pairwise distances, shape ``(..., 2)``.

    ``sq`` holds symmetric squared distances. Among the ``N = n (n - 1) / 2`` pairs ``i < j`` the
    median is the mean of the values of rank ``(N - 1) // 2`` and ``N // 2`` (the same entry when
    ``N`` is odd). They are found without gradient tracking: one ``numpy.partition`` call on CPU (a
    linear-time selection), ``kthvalue`` elsewhere.
    """
    n = sq.shape[-1]
    upper = _upper_index(n).to(sq.device)
    with torch.no_grad():
        pairs = sq.detach().flatten(-2).index_select(-1, upper)  # (..., N)
        count = pairs.shape[-1]
        ranks = [(count - 1) // 2, count // 2]
        if _on_host(pairs):
            values = pairs.numpy()
            middle = np.partition(values, ranks, axis=-1)[..., ranks]
            # the first pair holding each middle value (tied pairs hold equal values)
            where = np.stack([np.argmax(values == middle[..., k, None], axis=-1) for k in range(2)], -1)
            index = torch.from_numpy(where).to(sq.device)
        else:
            index = torch.stack([pairs.kthvalue(r + 1, dim=-1).indices for r in ranks], dim=-1)
    return upper[index]


def _width(sq: Tensor, pairs: Tensor) -> Tensor:
    """The median width ``s`` from the two middle entries ``pairs`` (see :func:`_median_pairs`)."""
    s = 0.5 * sq.flatten(-2).gather(-1, pairs).clamp_min(0.0).sqrt().sum(-1)
    if not bool((s > 0).all()):
        raise InputError("x: all samples coincide, so the median-distance kernel width is zero")
    return s


def _bandwidth_from_sq(sq: Tensor) -> Tensor:
    """Median distance between distinct samples, from symmetric squared distances with a zero diagonal.

    Differentiable: the gradient reaches exactly the two selected entries, as through a sort.
    """
    return _width(sq, _median_pairs(sq))


def median_bandwidth(x: Tensor) -> Tensor:
    """Median of the pairwise Euclidean distances between distinct samples, shape ``x.shape[:-2]``.

    >>> x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0], [15.0], [21.0], [28.0]])
    >>> float(median_bandwidth(x))
    10.5
    """
    _check(x)
    return _bandwidth_from_sq(_pairwise_sq(x))


def _kernel_and_rhs(xc: Tensor, sq: Tensor, s: Tensor) -> tuple[Tensor, ...]:
    """The kernel ``K`` and the right-hand sides ``[nabla K, nabla^2 K]`` of the two Stein systems.

    ``xc`` (centred samples) has shape ``(..., n, d)``, ``sq`` ``(..., n, n)`` and ``s`` ``(...)``;
    ``xc`` may be shared by a batch of kernels (it broadcasts). With ``u = 1 / s^2``,
    ``M = K [1, x, x^2]`` gives the row sums ``r``, ``K x`` and ``K x^2`` in one matrix product, and

    ``nabla K = u (K x - r x)``,  ``nabla^2 K = u^2 ((K x^2 - r x^2) - 2 x (K x - r x)) - u r``,

    which are the formulas of the module docstring with the squares expanded. Returns ``kernel``,
    ``r``, ``t1 = K x - r x``, ``t2 = K x^2 - r x^2`` and the stacked right-hand sides.
    """
    d = xc.shape[-1]
    inv_s2 = (s * s).reciprocal()[..., None, None]
    kernel = torch.exp(sq * (-0.5 * inv_s2)) / s[..., None, None]
    feats = torch.cat([torch.ones_like(xc[..., :1]), xc, xc * xc], dim=-1)
    # K is symmetric, so K F = (F^T K)^T; the skinny factor on the left is several times faster (MKL)
    moments = (feats.transpose(-1, -2) @ kernel).transpose(-1, -2)
    r = moments[..., :1]
    t1, t2 = (moments[..., 1:] - r * feats[..., 1:]).split(d, dim=-1)
    rhs = torch.cat([t1 * inv_s2, (t2 - 2.0 * xc * t1) * inv_s2.square() - r * inv_s2], dim=-1)
    return kernel, r, t1, t2, rhs


_LAPACK_MAX_N = 512
"""Systems up to this size are factorised with SciPy's LAPACK on CPU: for the small batched systems
of the ordering loss ``torch.linalg.cholesky_ex`` costs several times more per call (measured on the
benchmark machine)."""


class _RidgeFactor:
    """Factorisation of ``K + eta I`` for a batch of symmetric ``K`` ``(..., n, n)``; :meth:`solve`.

    Cholesky, with SciPy's LAPACK for small CPU systems and torch otherwise; an LU factorisation if
    rounding makes ``K + eta I`` indefinite (float32 with a tiny ridge).
    """

    def __init__(self, kernel: Tensor, eta: float):
        n = kernel.shape[-1]
        system = kernel.detach().clone()
        system.diagonal(dim1=-2, dim2=-1).add_(eta)
        self.pivots = None
        self.lapack: list[np.ndarray] | None = None
        if _on_host(system) and n <= _LAPACK_MAX_N:
            mats = system.reshape(-1, n, n).numpy()
            potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (mats,))
            factors = []
            for a in mats:
                factor, info = potrf(a, lower=True, clean=False, overwrite_a=False)
                if info != 0:
                    break
                factors.append(factor)
            else:
                self.lapack = factors
                return
        factor, info = torch.linalg.cholesky_ex(system)
        if not bool((info == 0).all()):
            factor, self.pivots = torch.linalg.lu_factor(system)
        self.factor = factor

    def solve(self, rhs: Tensor) -> Tensor:
        """``(K + eta I)^-1 rhs`` (the matrix is symmetric, so this is also the transposed solve)."""
        if self.lapack is not None:
            n, m = rhs.shape[-2], rhs.shape[-1]
            flat = rhs.detach().reshape(-1, n, m).numpy()
            potrs = scipy.linalg.lapack.get_lapack_funcs("potrs", (flat,))
            out = np.stack([potrs(f, b, lower=True)[0] for f, b in zip(self.lapack, flat, strict=True)])
            return torch.from_numpy(out).reshape(rhs.shape)
        if self.pivots is None:
            return torch.cholesky_solve(rhs, self.factor)
        return torch.linalg.lu_solve(self.factor, self.pivots, rhs)


class _RidgeSolve(torch.autograd.Function):
    """``(K + eta I)^-1 B`` for symmetric ``K`` (batched), with the gradient written out by hand:
    ``dB = (K + eta I)^-1 g`` (one more solve with the saved factor) and ``dK = -dB X^T`` with ``X``
    the solution. Autograd through ``cholesky`` and ``cholesky_solve`` gives the same numbers with
    several more triangular solves."""

    @staticmethod
    def forward(ctx, kernel: Tensor, rhs: Tensor, eta: float) -> Tensor:
        ctx.factor = _RidgeFactor(kernel, eta)
        sol = ctx.factor.solve(rhs)
        ctx.save_for_backward(sol)
        return sol

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (sol,) = ctx.saved_tensors
        grad_rhs = ctx.factor.solve(grad)
        return -grad_rhs @ sol.transpose(-1, -2), grad_rhs, None


def _stein_terms(x: Tensor, sq: Tensor, s: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Score ``G`` and ``(K + eta I)^-1 nabla^2 K`` for kernel distances ``sq`` and width ``s``.

    ``x`` has shape ``(..., n, d)``, ``sq`` and the kernel ``(..., n, n)``, ``s`` shape ``(...)``.
    """
    xc = x - x.mean(dim=-2, keepdim=True)
    kernel, _, _, _, rhs = _kernel_and_rhs(xc, sq, s)
    sol = _RidgeSolve.apply(kernel, rhs, eta)
    d = x.shape[-1]
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

    The parameters are those of :func:`stein_score`.

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
    it; the prefix distances are prefix sums of per-coordinate squared differences, the systems are
    factorised together, and the gradient is computed by a hand-written backward pass (checked
    against autograd through the same formulas in the tests).

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
    return _NestedHessian.apply(x, eta, min_prefix)


class _NestedHessian(torch.autograd.Function):
    """The Hessian diagonals of all prefixes with a hand-written backward pass.

    Autograd through the same forward computation gives the same gradient (the tests compare the
    two, and ``gradcheck`` the finite differences) but records some sixty graph nodes; at the batch
    sizes of coVAE (n = 128, d = 5) their bookkeeping costs more than the arithmetic. Notation as in
    :func:`_kernel_and_rhs`, per prefix ``k`` with the coordinate mask ``m_k``:
    ``sq = sum_c m_c (x_c - x_c^T)^2``,
    ``s = (sqrt(sq_a) + sqrt(sq_b)) / 2`` for the two middle pairs ``a, b``, ``u = 1 / s^2``,
    ``K = exp(-u sq / 2) / s``, ``[G, S] = (K + eta I)^-1 rhs`` and ``H = (S - G * G) m``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, eta: float, min_prefix: int) -> Tensor:
        n, d = x.shape
        xc = x - x.mean(dim=0, keepdim=True)
        mask = (
            torch.arange(d, device=x.device)[None, :]
            < torch.arange(min_prefix, d + 1, device=x.device)[:, None]
        ).to(x.dtype)  # (p, d)
        diff = xc.T[:, :, None] - xc.T[:, None, :]  # (d, n, n), exact zeros on the diagonal
        sq = (mask @ (diff * diff).view(d, n * n)).view(len(mask), n, n)  # prefix sums over coordinates
        pairs = _median_pairs(sq)
        s = _width(sq, pairs)
        kernel, r, t1, t2, rhs = _kernel_and_rhs(xc, sq, s)
        factor = _RidgeFactor(kernel, eta)
        sol = factor.solve(rhs)
        grad, second = sol.split(d, dim=-1)
        ctx.factor = factor
        ctx.save_for_backward(xc, mask, sq, pairs, s, kernel, r, t1, t2, sol)
        return (second - grad * grad) * mask[:, None, :]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_hess: Tensor) -> tuple[Tensor, None, None]:
        xc, mask, sq, pairs, s, kernel, r, t1, t2, sol = ctx.saved_tensors
        p, n, d = sol.shape[0], xc.shape[0], xc.shape[1]
        u = (s * s).reciprocal()[:, None, None]  # (p, 1, 1)
        grad = sol[..., :d]
        g_second = g_hess * mask[:, None, :]
        g_rhs = ctx.factor.solve(torch.cat([-2.0 * grad * g_second, g_second], dim=-1))  # (p, n, 2d)
        g_n1, g_n2 = g_rhs.split(d, dim=-1)
        # rhs = [u t1, u^2 (t2 - 2 x t1) - u r]
        q = t2 - 2.0 * xc * t1
        g_u = (g_n2 * (2.0 * u * q - r)).sum((1, 2)) + (g_n1 * t1).sum((1, 2))
        g_t2 = u * u * g_n2
        g_t1 = u * g_n1 - 2.0 * xc * g_t2
        g_x = -2.0 * t1 * g_t2  # (p, n, d)
        g_r = -u * g_n2.sum(-1, keepdim=True)
        # t1 = K x - r x, t2 = K x^2 - r x^2
        g_r = g_r - (xc * g_t1 + xc * xc * g_t2).sum(-1, keepdim=True)
        g_x = g_x - r * (g_t1 + 2.0 * xc * g_t2)
        # moments = K [1, x, x^2]; K is symmetric, so the gradient of the features is K g = (g^T K)^T
        g_moments = torch.cat([g_r, g_t1, g_t2], dim=-1)  # (p, n, 2d + 1)
        # (n, 2d + 1), summed: the features are shared by the prefixes
        g_feats = (g_moments.transpose(1, 2) @ kernel).sum(0).T
        g_xc = g_x.sum(0) + g_feats[:, 1 : d + 1] + 2.0 * xc * g_feats[:, d + 1 :]
        feats = torch.cat([torch.ones_like(xc[:, :1]), xc, xc * xc], dim=-1)
        # dK from the moments and from the solve (dA = -dB X^T), in one matrix product
        g_kernel = torch.cat([g_moments, -g_rhs], dim=-1) @ torch.cat(
            [feats.expand(p, n, -1), sol], dim=-1
        ).transpose(1, 2)
        # K = exp(-u sq / 2) / s
        g_exp = g_kernel * kernel
        g_u = g_u - 0.5 * (g_exp * sq).sum((1, 2))
        g_s = -g_exp.sum((1, 2)) / s - 2.0 * g_u / (s * s * s)
        g_sq = -0.5 * u * g_exp
        # s = (sqrt(sq_a) + sqrt(sq_b)) / 2
        chosen = sq.view(p, n * n).gather(1, pairs)
        g_sq.view(p, n * n).scatter_add_(1, pairs, (0.25 * g_s)[:, None] / chosen.sqrt())
        # sq_ki = sum_c m_c (x_kc - x_ic)^2
        w = g_sq + g_sq.transpose(1, 2)
        w_x = (xc.T @ w).transpose(1, 2)  # = w @ xc, w is symmetric
        g_xc = g_xc + 2.0 * (mask[:, None, :] * (xc * w.sum(-1, keepdim=True) - w_x)).sum(0)
        return g_xc - g_xc.mean(dim=0, keepdim=True), None, None


def nested_residual_leafness(
    x: Tensor, eta: float = 1e-3, *, n_basis: int = 8, ridge: float = 1e-2, min_prefix: int = 2
) -> Tensor:
    """A scale-free leaf criterion for every leading sub-vector ``x[:, :k]``, ``k = min_prefix .. d``.

    For an additive noise model with Gaussian noise, a leaf ``x_j`` has the score
    ``d log p / d x_j = -(x_j - f_j(pa_j)) / sigma_j^2``: a linear function of its regression residual
    ``r_j = x_j - E[x_j | x_rest]``. For any other variable the score also carries its children's
    terms. This is the residual idea of NoGAM (Montagna et al., CLeaR 2023, arXiv 2304.03265); with
    SCORE's Gaussian noise the relation is linear, so the criterion is ``1 - corr(score_j, r_j)^2``:
    0 for a leaf, larger otherwise. Every column is standardised over the batch first, so the value
    does not change when a variable is rescaled (the Hessian variance of :func:`nested_hessian_diag`
    shrinks as ``1 / c^4``), and the correlation does not see the score's scale.

    The score of each prefix is :func:`stein_score`'s on the standardised columns. The residual is the
    leave-one-out residual of an additive ridge regression of ``x_j`` on the prefix's other columns,
    each expanded in ``n_basis`` Gaussian bumps on [-2, 2] (CAM's additive model, Bühlmann et al.,
    arXiv 1310.1533):
    ``r = (y - Phi beta) / (1 - h)`` with ``h`` the diagonal of the hat matrix and ``ridge * n`` on the
    diagonal of ``Phi^T Phi``. All regressions (one per column of each prefix) are solved in one
    batched Cholesky call (a column outside the regression is a zero column, decoupled by the ridge),
    and the result is differentiable by autograd.

    Returns
    -------
    Tensor, shape ``(d - min_prefix + 1, d)``: row ``k - min_prefix`` holds the criterion of the columns
    of ``x[:, :k]`` in its first ``k`` entries and ``nan`` after (``min_prefix=d``: one row, all columns).

    Examples
    --------
    The leaf of a two-variable ANM has the lower value, at any scale:

    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(256, generator=g, dtype=torch.float64)
    >>> b = torch.sin(2 * a) + 0.4 * torch.randn(256, generator=g, dtype=torch.float64)
    >>> crit = nested_residual_leafness(torch.stack([a, 100 * b], 1))[0]
    >>> bool(crit[1] < crit[0])
    True
    """
    _check(x)
    _check_eta(eta)
    if x.ndim != 2 or x.shape[1] < 2:
        raise InputError(f"x: expected shape (n_samples, n_dims) with n_dims >= 2, got {tuple(x.shape)}")
    if not ridge > 0:
        raise InputError(f"ridge: must be positive, got {ridge}")
    if n_basis < 2:
        raise InputError(f"n_basis: expected at least 2 basis functions, got {n_basis}")
    n, d = x.shape
    if not 2 <= min_prefix <= d:
        raise InputError(f"min_prefix: expected 2..{d} for {d} dimensions, got {min_prefix}")
    tiny = torch.finfo(x.dtype).tiny
    xc = x - x.mean(0)
    xs = xc / xc.pow(2).mean(0).sqrt().clamp_min(tiny)  # every column standardised: scale-free
    ks = torch.arange(min_prefix, d + 1, device=x.device)
    cols = torch.arange(d, device=x.device)
    prefix = (cols[None] < ks[:, None]).to(x.dtype)  # one row per prefix
    scores = stein_score(xs[None] * prefix[:, None, :], eta)  # (prefixes, n, d); zero columns do not count

    kk = torch.tensor([k for k in range(min_prefix, d + 1) for _ in range(k)], device=x.device)
    jj = torch.tensor([j for k in range(min_prefix, d + 1) for j in range(k)], device=x.device)
    rest = (cols[None] < kk[:, None]) & (cols[None] != jj[:, None])  # (m, d) regressors of each pair
    centres = torch.linspace(-2.0, 2.0, n_basis, dtype=x.dtype, device=x.device)
    width = 4.0 / (n_basis - 1)
    bumps = torch.exp(-(xs[..., None] - centres).pow(2) / (2 * width**2))  # (n, d, n_basis)
    design = bumps[None] * rest[:, None, :, None].to(x.dtype)  # (m, n, d, n_basis)
    design = torch.cat([torch.ones_like(design[..., 0, :1]), design.flatten(2)], dim=2)  # (m, n, p)
    p = design.shape[2]
    gram = design.mT @ design + ridge * n * torch.eye(p, dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky(gram)
    y = xs[:, jj].T[..., None]  # (m, n, 1)
    fitted = design @ torch.cholesky_solve(design.mT @ y, chol)
    hat = (design * torch.cholesky_solve(design.mT, chol).mT).sum(2)  # (m, n)
    resid = (y - fitted)[..., 0] / (1 - hat)

    score = scores[kk - min_prefix, :, jj]  # (m, n)
    score = score - score.mean(1, keepdim=True)
    resid = resid - resid.mean(1, keepdim=True)
    corr2 = (score * resid).sum(1).pow(2) / (score.pow(2).sum(1) * resid.pow(2).sum(1)).clamp_min(tiny)
    out = torch.full((len(ks), d), float("nan"), dtype=x.dtype, device=x.device)
    return out.index_put((kk - min_prefix, jj), 1 - corr2)
