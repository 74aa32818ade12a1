"""Metrics for causal representation learning: MCC, R², order divergence and SHD.

Keys follow METRICS.md: ``mcc_pearson``, ``mcc_spearman`` (mean absolute correlation of the
Hungarian-matched pairs of true and learned latents, as in "Variational autoencoders and nonlinear
ICA: a unifying framework", Khemakhem et al., AISTATS 2020, arXiv 1907.04809), ``r2`` (R² of a linear
regression from the learned latents to each true latent, averaged over true latents),
``order_divergence`` (the topological divergence D_top of SCORE, Rolland et al., arXiv 2203.04413:
the number of true edges that point against an order) and ``shd`` (structural Hamming distance).

Adjacency matrices use ``A[i, j] = 1`` for an edge ``i -> j``; orders list variables root first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trustmed.errors import InputError

__all__ = [
    "match_latents",
    "mcc",
    "r2_linear",
    "order_divergence",
    "shd",
    "learned_order",
    "causal_metrics",
]


def _matrix(a, name: str) -> np.ndarray:
    arr = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected shape (n_samples, n_latents), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return arr


def _correlation(z_true: np.ndarray, z_hat: np.ndarray, method: str) -> np.ndarray:
    """|corr| between every true (rows) and learned (columns) latent."""
    from scipy import stats

    if method == "spearman":
        z_true = np.apply_along_axis(stats.rankdata, 0, z_true)
        z_hat = np.apply_along_axis(stats.rankdata, 0, z_hat)
    elif method != "pearson":
        raise InputError(f"method: expected 'pearson' or 'spearman', got {method!r}")
    a = z_true - z_true.mean(0)
    b = z_hat - z_hat.mean(0)
    denom = np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(a.T @ b) / denom
    return np.nan_to_num(corr, nan=0.0)


def _check_pair(z_true, z_hat) -> tuple[np.ndarray, np.ndarray]:
    zt, zh = _matrix(z_true, "z_true"), _matrix(z_hat, "z_hat")
    if zt.shape[0] != zh.shape[0]:
        raise InputError(f"z_hat: {zh.shape[0]} samples, but z_true has {zt.shape[0]}")
    if zt.shape[1] > zh.shape[1]:
        raise InputError(
            f"z_true has {zt.shape[1]} latents, more than the {zh.shape[1]} learned ones; "
            "every true latent needs a learned partner"
        )
    return zt, zh


def match_latents(z_true, z_hat, *, method: str = "pearson") -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of true to learned latents by absolute correlation.

    Returns
    -------
    match : ndarray of int, shape ``(d,)``: learned index matched to each true latent.
    corr : ndarray, shape ``(d,)``: the matched absolute correlations.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(200, 2))
    >>> match_latents(z, np.stack([-z[:, 1], 3 * z[:, 0]], axis=1))[0].tolist()
    [1, 0]
    """
    from scipy.optimize import linear_sum_assignment

    zt, zh = _check_pair(z_true, z_hat)
    corr = _correlation(zt, zh, method)
    rows, cols = linear_sum_assignment(-corr)
    match = np.empty(zt.shape[1], dtype=int)
    match[rows] = cols
    return match, corr[np.arange(zt.shape[1]), match]


def mcc(z_true, z_hat, *, method: str = "pearson") -> float:
    """Mean correlation coefficient: mean |corr| of the Hungarian-matched pairs (1 is perfect).

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(300, 3))
    >>> round(mcc(z, z[:, ::-1] * [2.0, -1.0, 0.5]), 6)
    1.0
    """
    return float(match_latents(z_true, z_hat, method=method)[1].mean())


def r2_linear(z_true, z_hat) -> float:
    """Mean over true latents of the R² of an ordinary least-squares fit from all learned latents.

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(300, 2))
    >>> round(r2_linear(z, z @ np.array([[1.0, 2.0], [0.5, -1.0]])), 6)
    1.0
    """
    zt, zh = _matrix(z_true, "z_true"), _matrix(z_hat, "z_hat")
    if zt.shape[0] != zh.shape[0]:
        raise InputError(f"z_hat: {zh.shape[0]} samples, but z_true has {zt.shape[0]}")
    design = np.column_stack([np.ones(len(zh)), zh])
    coef, *_ = np.linalg.lstsq(design, zt, rcond=None)
    resid = zt - design @ coef
    total = ((zt - zt.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - (resid**2).sum(0) / total
    return float(np.nanmean(r2))


def _adjacency(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InputError(f"{name}: expected a square adjacency matrix, got shape {arr.shape}")
    return (arr != 0).astype(int)


def order_divergence(adjacency, order) -> int:
    """D_top: the number of edges ``i -> j`` of ``adjacency`` where ``j`` comes before ``i`` in ``order``.

    >>> A = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    >>> order_divergence(A, [0, 1, 2]), order_divergence(A, [2, 1, 0])
    (0, 3)
    """
    adj = _adjacency(adjacency, "adjacency")
    order = [int(v) for v in order]
    if sorted(order) != list(range(adj.shape[0])):
        raise InputError(f"order: expected a permutation of 0..{adj.shape[0] - 1}, got {order}")
    position = np.empty(len(order), dtype=int)
    position[order] = np.arange(len(order))
    tails, heads = np.nonzero(adj)
    return int((position[heads] < position[tails]).sum())


def shd(true_adjacency, estimated_adjacency) -> int:
    """Structural Hamming distance: edge additions + deletions + reversals (a reversal counts once).

    >>> A = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    >>> B = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0]])
    >>> shd(A, B)  # 0->1 reversed, 1->2 missing, 2->0 extra
    3
    """
    a = _adjacency(true_adjacency, "true_adjacency")
    b = _adjacency(estimated_adjacency, "estimated_adjacency")
    if a.shape != b.shape:
        raise InputError(f"estimated_adjacency: shape {b.shape}, but the true graph is {a.shape}")
    skel_a, skel_b = np.triu(a + a.T) > 0, np.triu(b + b.T) > 0
    differ_skeleton = int((skel_a != skel_b).sum())
    both = skel_a & skel_b
    rows, cols = np.nonzero(both)
    differ_direction = int(
        sum(a[i, j] != b[i, j] or a[j, i] != b[j, i] for i, j in zip(rows, cols, strict=True))
    )
    return differ_skeleton + differ_direction


def learned_order(match: np.ndarray) -> list[int]:
    """The order of the true latents that the learned latent indices imply (root = smallest index).

    >>> learned_order(np.array([2, 0, 1]))
    [1, 2, 0]
    """
    return [int(v) for v in np.argsort(np.asarray(match), kind="stable")]


def causal_metrics(z_true, z_hat, adjacency=None, *, order_fn: Callable | None = None) -> dict:
    """All causal-representation metrics of METRICS.md with their stable keys.

    ``order_divergence`` scores the identity order of the learned latents (after matching); it needs
    the true ``adjacency``. With ``order_fn`` (a function from an ``(n, d)`` array to an order of its
    columns, root first, such as :func:`trustmed.causal.score_order`) and ``adjacency``,
    ``order_divergence_score`` scores the order ``order_fn`` finds on the matched learned latents.

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(200, 2))
    >>> out = causal_metrics(z, z[:, ::-1], np.array([[0, 1], [0, 0]]), order_fn=lambda x: [1, 0])
    >>> round(out["mcc_pearson"], 6), out["order_divergence"], out["order_divergence_score"]
    (1.0, 1, 1)
    """
    zt, zh = _check_pair(z_true, z_hat)
    match, corr = match_latents(zt, zh, method="pearson")
    out: dict = {
        "mcc_pearson": float(corr.mean()),
        "mcc_spearman": mcc(zt, zh, method="spearman"),
        "r2": r2_linear(zt, zh),
        "n_samples": int(zt.shape[0]),
        "n_latents_true": int(zt.shape[1]),
        "n_latents_learned": int(zh.shape[1]),
        "match": match.tolist(),
    }
    if adjacency is not None:
        adj = _adjacency(adjacency, "adjacency")
        out["order_divergence"] = order_divergence(adj, learned_order(match))
        out["n_edges"] = int(adj.sum())
        if order_fn is not None:
            out["order_divergence_score"] = order_divergence(adj, order_fn(zh[:, match]))
    return out
