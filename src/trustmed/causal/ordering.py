"""Causal ordering from the Hessian of the log-density (SCORE), and pruning of the order to a graph.

SCORE, "Score matching enables causal discovery of nonlinear additive noise models" (Rolland et al.,
ICML 2022, arXiv 2203.04413): for an additive noise model ``x_j = f_j(pa_j) + eps_j`` with Gaussian
noise, ``x_j`` is a leaf if and only if the diagonal entry ``d^2 log p / d x_j^2`` of the Hessian is
constant, so the variable whose Stein Hessian entry varies least over the samples is a leaf. Removing it
and repeating gives a topological order, leaf by leaf.

The criterion is not invariant to rescaling a variable (its Hessian entry scales by ``1/c^2`` and the
variance by ``1/c^4``): :func:`score_order` therefore works on the data as given. ``standardize=True``
divides every column by its standard deviation first; on synthetic ANMs this reversed edges that the raw
data ordered correctly, so use it only when the units of the columns are arbitrary.

Pruning the full order to a sparse graph follows CAM, "CAM: Causal additive models, high-dimensional
order search and penalized regression" (Bühlmann, Peters & Ernest, Annals of Statistics 2014,
arXiv 1310.1533), in a light form: each variable is regressed on additive spline features of its
predecessors and a predecessor is kept when dropping its features worsens the fit significantly
(F-test). ``method="causallearn"`` keeps a predecessor when a causal-learn conditional independence
test (default ``"kci"``) rejects independence given the other predecessors.
"""

from __future__ import annotations

import numpy as np
import torch

from trustmed.causal.stein import check_leaf_criterion, nested_residual_leafness, stein_hessian_diag
from trustmed.errors import InputError

__all__ = ["score_order", "prune_order", "full_dag_from_order"]


def _as_matrix(x, name: str = "X") -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected shape (n_samples, n_variables), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return arr.astype(np.float64)


def score_order(
    x, *, eta: float = 1e-3, standardize: bool = False, criterion: str = "hessian", dtype=torch.float64
) -> list[int]:
    """SCORE's topological order of the columns of ``x``, root first.

    Parameters
    ----------
    x : array or Tensor, shape ``(n, d)``
    eta : float
        Ridge of the Stein estimator.
    standardize : bool
        Divide each column by its standard deviation first. The Hessian criterion depends on the scale
        of each variable, so this can reverse edges; off by default.
    criterion : ``"hessian"`` or ``"residual"``
        The leaf is the column with the least variance of its Stein Hessian entry (SCORE), or with the
        least ``1 - corr(score, residual)^2`` (:func:`trustmed.causal.stein.nested_residual_leafness`),
        which does not depend on the columns' scales.
    dtype : torch dtype used for the estimator.

    Returns
    -------
    list of int: a permutation of ``range(d)``; every edge of the true DAG should point from an
    earlier to a later entry.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=500)
    >>> b = 1.5 * np.tanh(2 * a) + 0.5 * rng.normal(size=500)
    >>> score_order(np.stack([b, a], axis=1))
    [1, 0]
    """
    check_leaf_criterion(criterion)
    arr = _as_matrix(x)
    if standardize:
        scale = arr.std(axis=0)
        if (scale == 0).any():
            raise InputError(f"X: column(s) {np.flatnonzero(scale == 0).tolist()} are constant")
        arr = arr / scale
    data = torch.as_tensor(arr, dtype=dtype)
    remaining = list(range(arr.shape[1]))
    reverse_order: list[int] = []
    while len(remaining) > 1:
        sub = data[:, remaining]
        if criterion == "residual":
            crit = nested_residual_leafness(sub, eta, min_prefix=len(remaining))[0]
        else:
            crit = stein_hessian_diag(sub, eta).var(dim=0)
        leaf = int(torch.argmin(crit))
        reverse_order.append(remaining.pop(leaf))
    reverse_order.append(remaining[0])
    return reverse_order[::-1]


def full_dag_from_order(order: list[int]) -> np.ndarray:
    """The complete DAG of an order: ``A[i, j] = 1`` for every ``i`` before ``j``.

    >>> full_dag_from_order([2, 0, 1]).tolist()
    [[0, 1, 0], [0, 0, 0], [1, 1, 0]]
    """
    d = len(order)
    adj = np.zeros((d, d), dtype=int)
    for pos, parent in enumerate(order):
        adj[parent, order[pos + 1 :]] = 1
    return adj


def _spline_features(x: np.ndarray, n_knots: int) -> np.ndarray:
    from sklearn.preprocessing import SplineTransformer

    return SplineTransformer(n_knots=n_knots, degree=3, include_bias=False).fit_transform(x[:, None])


def _rss(design: np.ndarray, y: np.ndarray) -> float:
    design = np.column_stack([np.ones(len(y)), design]) if design.size else np.ones((len(y), 1))
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return float(resid @ resid)


def _prune_spline(arr: np.ndarray, order: list[int], alpha: float, n_knots: int) -> np.ndarray:
    from scipy import stats

    n, d = arr.shape
    feats = {j: _spline_features(arr[:, j], n_knots) for j in range(d)}
    adj = np.zeros((d, d), dtype=int)
    for pos, child in enumerate(order):
        parents = order[:pos]
        if not parents:
            continue
        y = arr[:, child]
        full = np.hstack([feats[p] for p in parents])
        rss_full = _rss(full, y)
        dof_full = n - full.shape[1] - 1
        for p in parents:
            reduced = (
                np.hstack([feats[q] for q in parents if q != p]) if len(parents) > 1 else np.empty((n, 0))
            )
            k = feats[p].shape[1]
            f_stat = ((_rss(reduced, y) - rss_full) / k) / max(rss_full / dof_full, 1e-300)
            if stats.f.sf(f_stat, k, dof_full) < alpha:
                adj[p, child] = 1
    return adj


def _prune_causallearn(arr: np.ndarray, order: list[int], alpha: float, test: str) -> np.ndarray:
    try:
        from causallearn.utils.cit import CIT
    except ImportError as exc:
        raise ImportError(
            "pruning with causal-learn needs the 'causal' extra: pip install trustmed[causal]"
        ) from exc
    ci_test = CIT(arr, test)
    d = arr.shape[1]
    adj = np.zeros((d, d), dtype=int)
    for pos, child in enumerate(order):
        parents = order[:pos]
        for p in parents:
            others = [q for q in parents if q != p]
            if ci_test(p, child, others) < alpha:
                adj[p, child] = 1
    return adj


def prune_order(
    x,
    order: list[int],
    *,
    method: str = "spline",
    alpha: float = 0.001,
    n_knots: int = 5,
    ci_test: str = "kci",
) -> np.ndarray:
    """Prune the complete DAG of ``order`` to the edges the data support.

    Parameters
    ----------
    x : array, shape ``(n, d)``
    order : list of int
        A topological order, root first (from :func:`score_order`).
    method : ``"spline"`` or ``"causallearn"``
        ``"spline"``: CAM-style F-test of each predecessor's additive spline features.
        ``"causallearn"``: a causal-learn conditional independence test (``ci_test``) of the child
        and each predecessor given the other predecessors (needs ``trustmed[causal]``).
    alpha : float
        Significance level for keeping an edge.

    Returns
    -------
    ndarray of int, shape ``(d, d)``: ``A[i, j] = 1`` for an edge ``i -> j``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=400); c = rng.normal(size=400)
    >>> b = np.tanh(2 * a) + 0.3 * rng.normal(size=400)
    >>> prune_order(np.stack([a, b, c], axis=1), [0, 2, 1]).tolist()
    [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    """
    arr = _as_matrix(x)
    d = arr.shape[1]
    if sorted(order) != list(range(d)):
        raise InputError(f"order: expected a permutation of 0..{d - 1}, got {list(order)}")
    if method == "spline":
        return _prune_spline(arr, list(order), alpha, n_knots)
    if method == "causallearn":
        return _prune_causallearn(arr, list(order), alpha, ci_test)
    raise InputError(f"method: expected 'spline' or 'causallearn', got {method!r}")
