"""Group fairness metrics for binary classifiers, with bootstrap confidence intervals on every number.

Definitions follow ``METRICS.md``: per-group rates at a threshold (ŷ = 1[s ≥ τ]), ranking metrics
(AUC, average precision), calibration (ECE with 15 equal-width bins, L1; Guo et al., "On Calibration
of Modern Neural Networks", arXiv:1706.04599) and log-loss, and the between-group gaps of
demographic parity and equalised odds (Hardt et al., "Equality of Opportunity in Supervised
Learning", arXiv:1610.02413) as reported by fairlearn and by MEDFAIR (Zong et al., "MEDFAIR:
Benchmarking Fairness for Medical Imaging", arXiv:2210.01725).

Confidence intervals are percentile bootstrap intervals drawn by :mod:`trustmed.metrics.bootstrap`:
each replicate keeps every group's size (stratified) and, when patient ids are given, resamples
whole patients within a group (clustered). Every number, gaps and worst-group values included, is
recomputed from the same resample, so the interval of a gap is the interval of the gap itself
rather than a combination of per-group intervals.

A resample is represented by multiplicity weights, so every metric is a function of weighted sums:
rates and calibration are matrix products of the (replicates × samples) weight matrix with
per-sample features, and AUC / average precision come from cumulative weighted sums over each
group's positives (sorted once by descending score) and negatives (ascending), read at positions
precomputed by binary search. Replicates are processed in chunks that bound memory; the only Python
loops run over groups and replicate rows when drawing the counts, never over samples.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 400)
>>> s = np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1)
>>> g = np.where(rng.random(400) < 0.5, "a", "b")
>>> rep = fairness_report(y, s, groups=g, n_boot=200, seed=0, attribute="site")
>>> sorted(rep["groups"])
['a', 'b']
>>> lo, hi = rep["gaps"]["dp_gap"]["ci"]
>>> lo <= rep["gaps"]["dp_gap"]["value"] <= hi
True
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trustmed.errors import InputError
from trustmed.metrics.bootstrap import Bootstrap, check_ci, check_n_boot, percentile_ci

__all__ = [
    "GROUP_METRICS",
    "GAP_METRICS",
    "N_BINS",
    "fairness_report",
    "group_metrics",
    "gaps",
    "UNKNOWN",
    "choose_threshold",
    "degenerate_reason",
    "encode_groups",
    "is_unknown_group",
]

logger = logging.getLogger(__name__)

GROUP_METRICS: tuple[str, ...] = (
    "prevalence",
    "auc",
    "ap",
    "accuracy",
    "balanced_accuracy",
    "tpr",
    "fpr",
    "tnr",
    "fnr",
    "ppv",
    "selection_rate",
    "ece",
    "bce",
)
"""Per-group (and overall) metrics with a CI, in report order; ``n`` and ``n_pos`` come as counts."""

GAP_METRICS: tuple[str, ...] = (
    "dp_gap",
    "eopp_tpr_gap",
    "eopp_fpr_gap",
    "eodds_max_gap",
    "eodds_mean_gap",
    "auc_gap",
    "worst_group_auc",
    "worst_group_accuracy",
)
"""Between-group summaries: gaps (lower is fairer) and worst-group values (higher is better)."""

N_BINS = 15
"""Equal-width bins on [0, 1] for the expected calibration error."""

_EPS = float(np.finfo(np.float64).eps)

UNKNOWN = "unknown"
"""The attribute value of a row whose sensitive attribute is not known; a missing value (NaN) reads
the same. By default such rows form their own group, reported but left out of the gaps and
worst-group values (``include_unknown=True`` counts them like any other group)."""

CHANCE_TOLERANCE = 1e-3
"""A balanced accuracy at most 0.5 + this is no better than a constant classifier."""


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------


def encode_groups(groups: Any, n: int, attribute: str | None = None) -> tuple[np.ndarray, list[str], str]:
    """Turn group labels into integer codes and names.

    Parameters
    ----------
    groups
        A 1-D array-like (one attribute), a pandas Series, or a DataFrame / mapping of several
        attribute columns (their intersection; names are ``attr=value`` joined by ``&``). A missing
        value (NaN, None) is read as :data:`UNKNOWN`.
    n
        Expected number of rows.
    attribute
        Name of the attribute; defaults to the Series name or the joined column names.

    Returns
    -------
    codes, names, attribute
        ``codes[i]`` indexes ``names``; names are sorted by the attribute values (``unknown``, when
        it stands for missing values only, comes last).

    >>> encode_groups({"sex": ["F", "M", "F"], "age": [1, 1, 2]}, 3)
    (array([0, 2, 1]), ['sex=F&age=1', 'sex=F&age=2', 'sex=M&age=1'], 'sex&age')
    >>> encode_groups(["a", None, "b"], 3)
    (array([0, 2, 1]), ['a', 'b', 'unknown'], 'group')
    """
    encoded = _encode(groups, n, attribute)
    return encoded.codes, encoded.names, encoded.attribute


@dataclass
class _Groups:
    codes: np.ndarray
    names: list[str]
    attribute: str
    unknown: np.ndarray  # per name: the attribute (or a part of an intersection) is unknown
    missing: list[tuple[str, int]]  # (column, count) of missing values read as unknown


def is_unknown_group(name: str) -> bool:
    """Whether a report's group name stands for an unknown attribute: ``unknown`` itself, or an
    intersection with an unknown part (``sex=unknown&age_bin=60-74``).

    >>> [is_unknown_group(g) for g in ("unknown", "sex=F&age=unknown", "sex=F&age=60")]
    [True, True, False]
    """
    name = str(name)
    if name == UNKNOWN:
        return True
    parts = name.split("&")
    if len(parts) < 2 or not all("=" in p for p in parts):
        return False
    return any(p.split("=", 1)[1] == UNKNOWN for p in parts)


def _factorize(values: pd.Series) -> tuple[np.ndarray, list[str], np.ndarray, int]:
    """Codes, names (sorted values; ``unknown`` appended when only missing values stand for it),
    which names are unknown, and how many values were missing."""
    missing = pd.isna(values).to_numpy()
    codes, uniques = pd.factorize(values.to_numpy(dtype=object) if missing.any() else values, sort=True)
    names = [str(u) for u in uniques]
    codes = codes.astype(np.int64)
    if missing.any():
        if UNKNOWN not in names:
            names.append(UNKNOWN)
        codes[missing] = names.index(UNKNOWN)
    return codes, names, np.array([name == UNKNOWN for name in names], dtype=bool), int(missing.sum())


def _encode(groups: Any, n: int, attribute: str | None = None) -> _Groups:
    if isinstance(groups, Mapping) and not isinstance(groups, pd.Series):
        groups = pd.DataFrame({str(k): np.asarray(v) for k, v in groups.items()})
    if isinstance(groups, pd.DataFrame):
        if groups.shape[1] == 0:
            raise InputError("groups: no attribute columns given")
        if groups.shape[1] == 1:
            return _encode(groups.iloc[:, 0], n, attribute or str(groups.columns[0]))
        frame = groups.reset_index(drop=True)
        _check_length(len(frame), n, "groups")
        cols = [str(c) for c in frame.columns]
        factors = [_factorize(frame[col]) for col in frame.columns]
        sizes = [len(names) for _, names, _, _ in factors]
        combined = np.ravel_multi_index([codes for codes, _, _, _ in factors], sizes)
        present, codes = np.unique(combined, return_inverse=True)
        value_index = np.unravel_index(present, sizes)
        names = [
            "&".join(f"{c}={f[1][j]}" for c, f, j in zip(cols, factors, combo, strict=True))
            for combo in zip(*value_index, strict=True)
        ]
        unknown = np.zeros(len(present), dtype=bool)
        for f, index in zip(factors, value_index, strict=True):
            unknown |= f[2][index]
        missing = [(c, f[3]) for c, f in zip(cols, factors, strict=True) if f[3]]
        return _Groups(codes.astype(np.int64).ravel(), names, attribute or "&".join(cols), unknown, missing)
    if isinstance(groups, pd.Series):
        attribute = attribute or (str(groups.name) if groups.name is not None else None)
        values = groups.reset_index(drop=True)
    else:
        array = np.asarray(groups)
        if array.ndim != 1:
            raise InputError(
                f"groups: expected a 1-D array or a table of attribute columns, got shape {array.shape}"
            )
        values = pd.Series(array)
    _check_length(len(values), n, "groups")
    codes, names, unknown, n_missing = _factorize(values)
    attribute = attribute or "group"
    return _Groups(codes, names, attribute, unknown, [(attribute, n_missing)] if n_missing else [])


def _check_length(got: int, n: int, what: str) -> None:
    if got != n:
        raise InputError(f"{what}: length {got} does not match y_true's length {n}")


def _check_no_missing(values: pd.Series, what: str) -> None:
    missing = np.flatnonzero(pd.isna(values).to_numpy())
    if missing.size:
        rows = ", ".join(str(r) for r in missing[:5])
        raise InputError(f"{what}: {missing.size} missing value(s) (rows {rows}); drop or fill them")


def _as_binary_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise InputError(f"y_true: expected a 1-D array, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.float64)
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        bad = sorted({str(v) for v in y})[:5]
        raise InputError(f"labels must be 0/1, got values {', '.join(bad)}") from None
    bad_mask = ~np.isin(yf, (0.0, 1.0))
    if bad_mask.any():
        bad = sorted({str(v) for v in y[bad_mask]})[:5]
        raise InputError(
            f"labels must be 0/1, got value(s) {', '.join(bad)} (row {np.flatnonzero(bad_mask)[0]})"
        )
    return yf


def _as_scores(y_score: Any, n: int) -> np.ndarray:
    try:
        s = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("scores must be numbers in [0, 1]") from None
    if s.ndim != 1:
        raise InputError(f"y_score: expected a 1-D array, got shape {s.shape}")
    _check_length(len(s), n, "y_score")
    nan = np.flatnonzero(np.isnan(s))
    if nan.size:
        raise InputError(
            f"scores: {nan.size} NaN value(s) (first at row {nan[0]}); expected numbers in [0, 1]"
        )
    out = np.flatnonzero((s < 0) | (s > 1))
    if out.size:
        raise InputError(
            f"scores must be in [0, 1]; row {out[0]} has {s[out[0]]:g} ({out.size} out of range)"
        )
    return s


# ----------------------------------------------------------------------------------------------
# the weighted-sum engine
# ----------------------------------------------------------------------------------------------


@dataclass
class _Ranks:
    """Precomputed positions for weighted AUC / AP over positives (by descending score) and
    negatives (by ascending score).

    ``below[i]``: number of negatives scoring strictly lower than positive ``i``; ``below_eq[i]``:
    lower or equal (``None`` when no positive ties with a negative); ``tie_end[i]``: last positive
    with the same score as positive ``i`` (``None`` when positive scores are distinct).
    """

    below: np.ndarray
    below_eq: np.ndarray | None
    tie_end: np.ndarray | None


@dataclass
class _Layout:
    """All samples, grouped: group ``g`` owns columns ``offsets[g]:offsets[g + 1]`` of a weight
    matrix, its positives first (descending score), then its negatives (ascending score)."""

    names: list[str]
    offsets: np.ndarray
    n_pos: np.ndarray
    y: np.ndarray
    features: np.ndarray
    group_ranks: list[_Ranks]
    overall_pos: np.ndarray  # columns of all positives, by descending score
    overall_neg: np.ndarray  # columns of all negatives, by ascending score
    overall_ranks: _Ranks
    strata: np.ndarray  # group index of every column
    clusters: np.ndarray | None  # cluster (patient) code of every column
    counted: np.ndarray  # per group: whether it enters the gaps and worst-group values

    @property
    def n(self) -> int:
        return int(self.offsets[-1])


def _features(y: np.ndarray, s: np.ndarray, threshold: float) -> np.ndarray:
    """Per-sample columns whose weighted sums give every thresholded, calibration and loss metric:
    1, y, ŷ, y·ŷ, log-loss, then (s − y) in each of the N_BINS calibration bins."""
    yhat = (s >= threshold).astype(np.float64)
    p = np.clip(s, _EPS, 1 - _EPS)
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    bins = np.minimum((s * N_BINS).astype(np.int64), N_BINS - 1)
    ece = np.zeros((len(s), N_BINS))
    ece[np.arange(len(s)), bins] = s - y
    return np.column_stack([np.ones_like(y), y, yhat, y * yhat, loss, ece])


def _ranks(pos_desc: np.ndarray, neg_asc: np.ndarray) -> _Ranks:
    below = np.searchsorted(neg_asc, pos_desc, side="left")
    below_eq = np.searchsorted(neg_asc, pos_desc, side="right")
    tie_end = np.searchsorted(-pos_desc, -pos_desc, side="right") - 1
    return _Ranks(
        below,
        None if np.array_equal(below, below_eq) else below_eq,
        None if np.array_equal(tie_end, np.arange(len(pos_desc))) else tie_end,
    )


def _layout(y, s, codes, names, threshold, cluster_ids, counted=None) -> _Layout:
    order_parts, n_pos, group_ranks = [], [], []
    for g in range(len(names)):
        members = np.flatnonzero(codes == g)
        pos = members[y[members] == 1]
        neg = members[y[members] == 0]
        pos = pos[np.argsort(-s[pos], kind="stable")]
        neg = neg[np.argsort(s[neg], kind="stable")]
        order_parts.append(np.concatenate([pos, neg]))
        n_pos.append(len(pos))
        group_ranks.append(_ranks(s[pos], s[neg]))
    order = np.concatenate(order_parts)
    ys, ss = y[order], s[order]
    offsets = np.cumsum([0] + [len(p) for p in order_parts])
    pos_cols = np.flatnonzero(ys == 1)
    neg_cols = np.flatnonzero(ys == 0)
    pos_cols = pos_cols[np.argsort(-ss[pos_cols], kind="stable")]
    neg_cols = neg_cols[np.argsort(ss[neg_cols], kind="stable")]
    return _Layout(
        names=list(names),
        offsets=offsets,
        n_pos=np.asarray(n_pos),
        y=ys,
        features=_features(ys, ss, threshold),
        group_ranks=group_ranks,
        overall_pos=pos_cols,
        overall_neg=neg_cols,
        overall_ranks=_ranks(ss[pos_cols], ss[neg_cols]),
        strata=np.repeat(np.arange(len(names)), np.diff(offsets)),
        clusters=None if cluster_ids is None else cluster_ids[order],
        counted=np.ones(len(names), dtype=bool) if counted is None else np.asarray(counted, dtype=bool),
    )


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _ranking(wp: np.ndarray, wn: np.ndarray, ranks: _Ranks) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUC (Mann–Whitney, ties count ½) and average precision (Σ_k ΔRecall_k ·
    Precision_k over distinct thresholds, as scikit-learn) for b replicates.

    ``wp`` (b, n_pos): weights of positives by descending score; ``wn`` (b, n_neg): weights of
    negatives by ascending score. Weights are counts, so a positive with weight > 0 has at least
    weight 1 predicted positive at its own threshold.
    """
    b = wp.shape[0]
    neg_cum = np.zeros((b, wn.shape[1] + 1))
    np.cumsum(wn, axis=1, out=neg_cum[:, 1:])
    n_neg = neg_cum[:, -1]
    below = np.take(neg_cum, ranks.below, axis=1)
    pos_cum = np.cumsum(wp, axis=1)
    n_pos = pos_cum[:, -1] if wp.shape[1] else np.zeros(b)
    pairs = below if ranks.below_eq is None else 0.5 * (below + np.take(neg_cum, ranks.below_eq, axis=1))
    auc = _divide(np.einsum("bm,bm->b", wp, pairs), n_pos * n_neg)
    tp = pos_cum if ranks.tie_end is None else np.take(pos_cum, ranks.tie_end, axis=1)
    predicted = n_neg[:, None] - below
    predicted += tp
    np.maximum(predicted, 1.0, out=predicted)
    ap = _divide(np.einsum("bm,bm->b", wp, tp / predicted), n_pos)
    return auc, ap


def _metrics(linear: np.ndarray, auc: np.ndarray, ap: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-group metric from the weighted feature sums ``linear`` (b, 5 + N_BINS)."""
    n, n_pos, n_pred, tp, loss = (linear[:, j] for j in range(5))
    n_neg = n - n_pos
    fp = n_pred - tp
    tn = n_neg - fp
    tpr, tnr = _divide(tp, n_pos), _divide(tn, n_neg)
    return {
        "n": n,
        "n_pos": n_pos,
        "prevalence": _divide(n_pos, n),
        "auc": auc,
        "ap": ap,
        "accuracy": _divide(tp + tn, n),
        "balanced_accuracy": (tpr + tnr) / 2,
        "tpr": tpr,
        "fpr": _divide(fp, n_neg),
        "tnr": tnr,
        "fnr": _divide(n_pos - tp, n_pos),
        "ppv": _divide(tp, n_pred),
        "selection_rate": _divide(n_pred, n),
        "ece": _divide(np.abs(linear[:, 5:]).sum(axis=1), n),
        "bce": _divide(loss, n),
    }


def _spread(values: np.ndarray) -> np.ndarray:
    """max − min over groups (axis 1) of the defined values; NaN unless ≥ 2 groups are defined."""
    defined = ~np.isnan(values)
    hi = np.where(defined, values, -np.inf).max(axis=1)
    lo = np.where(defined, values, np.inf).min(axis=1)
    return np.where(defined.sum(axis=1) >= 2, hi - lo, np.nan)


def _worst(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    return np.where(defined.any(axis=1), np.where(defined, values, np.inf).min(axis=1), np.nan)


def _gaps_from_groups(
    per_group: dict[str, np.ndarray], counted: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Gaps and worst-group values from per-group arrays of shape (b, K), over the groups ``counted``
    (a boolean mask of length K; default all)."""
    if counted is not None:
        per_group = {
            key: per_group[key][:, counted] for key in ("selection_rate", "tpr", "fpr", "auc", "accuracy")
        }
    tpr_gap, fpr_gap = _spread(per_group["tpr"]), _spread(per_group["fpr"])
    return {
        "dp_gap": _spread(per_group["selection_rate"]),
        "eopp_tpr_gap": tpr_gap,
        "eopp_fpr_gap": fpr_gap,
        "eodds_max_gap": np.maximum(tpr_gap, fpr_gap),
        "eodds_mean_gap": (tpr_gap + fpr_gap) / 2,
        "auc_gap": _spread(per_group["auc"]),
        "worst_group_auc": _worst(per_group["auc"]),
        "worst_group_accuracy": _worst(per_group["accuracy"]),
    }


def _evaluate(layout: _Layout, weights: np.ndarray) -> dict[str, Any]:
    """All metrics for b replicates given their weights (b, n); a row of ones is the data itself."""
    per_group: dict[str, list[np.ndarray]] = {}
    overall_linear = 0.0
    for g in range(len(layout.names)):
        lo, mid, hi = layout.offsets[g], layout.offsets[g] + layout.n_pos[g], layout.offsets[g + 1]
        linear = weights[:, lo:hi] @ layout.features[lo:hi]
        overall_linear = overall_linear + linear
        auc, ap = _ranking(weights[:, lo:mid], weights[:, mid:hi], layout.group_ranks[g])
        for key, value in _metrics(linear, auc, ap).items():
            per_group.setdefault(key, []).append(value)
    stacked = {key: np.stack(values, axis=1) for key, values in per_group.items()}
    auc, ap = _ranking(
        np.take(weights, layout.overall_pos, axis=1),
        np.take(weights, layout.overall_neg, axis=1),
        layout.overall_ranks,
    )
    overall = _metrics(np.asarray(overall_linear), auc, ap)
    return {"overall": overall, "groups": stacked, "gaps": _gaps_from_groups(stacked, layout.counted)}


def _bootstrap(layout: _Layout, n_boot: int, seed: int) -> dict[str, Any]:
    boot = Bootstrap(layout.n, strata=layout.strata, clusters=layout.clusters, seed=seed)
    parts = [_evaluate(layout, weights) for weights in boot.chunks(n_boot)]
    return {
        part: {key: np.concatenate([p[part][key] for p in parts]) for key in parts[0][part]}
        for part in ("overall", "groups", "gaps")
    }


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def _prepare_inputs(y_true, y_score, groups, threshold, patient_ids, attribute, include_unknown=False):
    y = _as_binary_labels(y_true)
    n = len(y)
    if n == 0:
        raise InputError("no predictions: the table is empty")
    s = _as_scores(y_score, n)
    encoded = _encode(groups, n, attribute)
    names = encoded.names
    if len(names) < 2:
        raise InputError(f"groups: only one group ('{names[0]}'); a fairness audit needs at least 2")
    counted = np.ones(len(names), dtype=bool) if include_unknown else ~encoded.unknown
    if counted.sum() < 2:
        known = [name for name, c in zip(names, counted, strict=True) if c]
        raise InputError(
            f"groups: only {len(known)} group with a known attribute"
            + (f" ('{known[0]}')" if known else "")
            + "; a fairness audit needs at least 2 (rows with an unknown attribute are left out of the "
            "gaps unless include_unknown is set)"
        )
    if not (isinstance(threshold, numbers.Real) and 0.0 <= float(threshold) <= 1.0):
        raise InputError(f"threshold must be a number in [0, 1], got {threshold!r}")
    cluster_ids = None
    if patient_ids is not None:
        cluster_ids = pd.Series(np.asarray(patient_ids, dtype=object))
        _check_length(len(cluster_ids), n, "patient_ids")
        _check_no_missing(cluster_ids, "patient_ids")
        cluster_ids = pd.factorize(cluster_ids)[0]
    layout = _layout(y, s, encoded.codes, names, float(threshold), cluster_ids, counted)
    return layout, encoded


def _point(layout: _Layout) -> dict[str, Any]:
    return _evaluate(layout, np.ones((1, layout.n)))


def group_metrics(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any,
    threshold: float = 0.5,
    attribute: str | None = None,
) -> pd.DataFrame:
    """Point estimates of every per-group metric, one row per group plus ``overall``.

    Parameters
    ----------
    y_true, y_score
        Binary labels and scores in [0, 1].
    groups
        Group labels (1-D) or several attribute columns (intersections), see :func:`encode_groups`.
    threshold
        ŷ = 1[score ≥ threshold].
    attribute
        Name of the attribute (only used for naming).

    Returns
    -------
    pandas.DataFrame
        Index: group names then ``"overall"``; columns ``n``, ``n_pos`` and :data:`GROUP_METRICS`.

    >>> df = group_metrics([0, 1, 0, 1], [0.2, 0.9, 0.6, 0.4], groups=["a", "a", "b", "b"])
    >>> [float(df.loc["a", "tpr"]), float(df.loc["b", "fpr"]), float(df.loc["overall", "accuracy"])]
    [1.0, 1.0, 0.5]
    """
    layout, _ = _prepare_inputs(y_true, y_score, groups, threshold, None, attribute, include_unknown=True)
    point = _point(layout)
    names = layout.names
    rows = {name: {k: v[0, i] for k, v in point["groups"].items()} for i, name in enumerate(names)}
    rows["overall"] = {k: v[0] for k, v in point["overall"].items()}
    return pd.DataFrame.from_dict(rows, orient="index")[["n", "n_pos", *GROUP_METRICS]]


def gaps(table: pd.DataFrame, *, include_unknown: bool = False) -> dict[str, float]:
    """Gaps and worst-group values from a :func:`group_metrics` table (the ``overall`` row is ignored).

    Undefined (NaN) group values are left out; a gap needs at least two defined groups. Groups of an
    unknown attribute (:func:`is_unknown_group`) are left out too, unless ``include_unknown``.

    >>> df = group_metrics([0, 1, 0, 1], [0.2, 0.9, 0.6, 0.4], groups=["a", "a", "b", "b"])
    >>> gaps(df)["eodds_max_gap"]
    1.0
    """
    rows = table.drop(index="overall", errors="ignore")
    if not include_unknown:
        rows = rows[[not is_unknown_group(name) for name in rows.index]]
    per_group = {
        key: rows[key].to_numpy(dtype=np.float64)[None, :]
        for key in ("selection_rate", "tpr", "fpr", "auc", "accuracy")
    }
    return {key: float(value[0]) for key, value in _gaps_from_groups(per_group).items()}


def _undefined_warnings(point: dict[str, Any], names: list[str], counted: np.ndarray) -> list[str]:
    messages = []
    g = point["groups"]
    for i, name in enumerate(names):
        n_pos, n = g["n_pos"][0, i], g["n"][0, i]
        if n_pos == 0:
            messages.append(
                f"group '{name}': no positives, tpr, fnr, balanced_accuracy, auc and ap undefined"
            )
        elif n_pos == n:
            messages.append(f"group '{name}': no negatives, fpr, tnr, balanced_accuracy and auc undefined")
        if np.isnan(g["ppv"][0, i]):
            messages.append(f"group '{name}': no predicted positives at this threshold, ppv undefined")
    for key, source in (("auc_gap", "auc"), ("eopp_tpr_gap", "tpr"), ("eopp_fpr_gap", "fpr")):
        left_out = [names[i] for i in np.flatnonzero(np.isnan(g[source][0]) & counted)]
        if left_out:
            defined = int(counted.sum()) - len(left_out)
            what = "undefined (fewer than 2 groups define it)" if defined < 2 else "computed without"
            messages.append(
                f"{key}: {what} group(s) {', '.join(repr(x) for x in left_out)} ({source} undefined)"
            )
    return messages


def _replicate_warnings(point, boot, names, n_boot) -> list[str]:
    """Numbers defined on the data but undefined in some replicates (their CI uses the rest)."""
    messages = []
    for i, name in enumerate(names):
        undefined = [
            f"{key} in {int(np.isnan(boot['groups'][key][:, i]).sum())}"
            for key in ("auc", "tpr", "fpr", "ppv")
            if not np.isnan(point["groups"][key][0, i]) and np.isnan(boot["groups"][key][:, i]).any()
        ]
        if undefined:
            messages.append(
                f"group '{name}': undefined in some of the {n_boot} bootstrap replicates "
                f"({'; '.join(undefined)}); their CIs use the other replicates"
            )
    return messages


def _entry(value: float, samples: np.ndarray | None, ci: tuple[float, float]) -> dict[str, Any]:
    value = float(value)
    if samples is None:
        return {"value": value}
    return {"value": value, "ci": [math.nan, math.nan] if math.isnan(value) else percentile_ci(samples, ci)}


def _block(point: dict[str, np.ndarray], boot: dict[str, np.ndarray] | None, col, ci) -> dict[str, Any]:
    def take(arr):
        return arr[:, col] if col is not None else arr

    out: dict[str, Any] = {"n": int(round(take(point["n"])[0])), "n_pos": int(round(take(point["n_pos"])[0]))}
    for key in GROUP_METRICS:
        out[key] = _entry(take(point[key])[0], None if boot is None else take(boot[key]), ci)
    return out


def degenerate_reason(overall: Mapping[str, Any]) -> str | None:
    """Why the predictions are degenerate at the reported threshold, or ``None`` when they are not.

    Degenerate: every prediction is the same class (selection rate 0 or 1), or the balanced accuracy
    is at most 0.5 + :data:`CHANCE_TOLERANCE` (no better than a constant classifier). A gap of such
    predictions is no sign of fairness: a constant classifier has every gap 0. The one detection
    used by the audit, ``debias run`` and ``debias compare`` (tables, figures, JSON).

    Parameters
    ----------
    overall
        A report's ``overall`` block (``{"value": v}`` entries) or plain numbers, with
        ``selection_rate`` and ``balanced_accuracy``.

    >>> degenerate_reason({"selection_rate": 0.0, "balanced_accuracy": 0.5})
    'constant predictions (all negative, balanced accuracy 0.500)'
    >>> degenerate_reason({"selection_rate": 0.4, "balanced_accuracy": 0.5004})
    'predictions no better than chance (balanced accuracy 0.500)'
    >>> degenerate_reason({"selection_rate": {"value": 0.4}, "balanced_accuracy": {"value": 0.71}}) is None
    True
    """

    def value(key: str) -> float:
        entry = overall.get(key)
        if isinstance(entry, Mapping):
            entry = entry.get("value")
        try:
            return float(entry)
        except (TypeError, ValueError):
            return math.nan

    rate, bacc = value("selection_rate"), value("balanced_accuracy")
    shown = "undefined" if math.isnan(bacc) else f"{bacc:.3f}"
    if rate == 0.0 or rate == 1.0:
        side = "positive" if rate == 1.0 else "negative"
        return f"constant predictions (all {side}, balanced accuracy {shown})"
    if not math.isnan(bacc) and bacc <= 0.5 + CHANCE_TOLERANCE:
        return f"predictions no better than chance (balanced accuracy {bacc:.3f})"
    return None


def fairness_report(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any,
    threshold: float = 0.5,
    patient_ids: Any = None,
    n_boot: int = 1000,
    ci: tuple[float, float] = (0.025, 0.975),
    seed: int = 0,
    attribute: str | None = None,
    min_group_size: int = 30,
    include_unknown: bool = False,
) -> dict[str, Any]:
    """Every fairness metric with a percentile-bootstrap CI, in the ``metrics.json`` layout.

    Rows whose attribute is unknown (the value ``"unknown"``, or missing) form their own group: it
    is reported with every per-group metric and counts in ``overall``, but it is left out of the
    gaps and worst-group values (``"excluded_from_gaps": true``) unless ``include_unknown``; an
    intersection with any unknown part is left out the same way.

    Parameters
    ----------
    y_true
        Binary labels (0/1 or bool), shape (n,).
    y_score
        Scores (probability of the positive class) in [0, 1], shape (n,).
    groups
        Sensitive attribute(s): a 1-D array-like, or a DataFrame / mapping of several columns, whose
        intersections become the groups (names ``attr=value`` joined by ``&``). A missing value is
        read as ``"unknown"`` (one warning gives the count).
    threshold
        ŷ = 1[score ≥ threshold] for the thresholded metrics.
    patient_ids
        Optional patient id per row; the bootstrap then resamples whole patients within each group.
    n_boot
        Number of bootstrap replicates; 0 gives point estimates only (no ``ci`` keys).
    ci
        Lower and upper quantiles of the percentile interval.
    seed
        Seed of the resampling; the same inputs and seed give the same intervals.
    attribute
        Name of the attribute, written to the report.
    min_group_size
        Groups with fewer predictions are flagged ``"small": true`` and named in one warning;
        their numbers and CIs are still computed.
    include_unknown
        Count the unknown group in the gaps and worst-group values like any other group.

    Returns
    -------
    dict
        ``task``, ``attribute``, ``threshold``, ``n_boot``, ``min_group_size``, ``include_unknown``,
        ``overall``, ``groups``, ``gaps``, ``degenerate``, ``warnings``. Every number is
        ``{"value": v, "ci": [lo, hi]}`` (undefined numbers are ``nan``); ``n`` and ``n_pos`` are
        plain counts; every group has ``small`` and ``excluded_from_gaps``. ``degenerate`` is
        ``None``, or ``{"reason": ..., "balanced_accuracy": ..., "selection_rate": ...}`` when the
        predictions are constant or no better than chance (:func:`degenerate_reason`; a warning
        says so).

    Raises
    ------
    InputError
        Non-binary labels, NaN or out-of-range scores, fewer than two groups (fewer than two known
        ones unless ``include_unknown``), length mismatch, empty input, or a bad ``n_boot`` /
        ``ci`` / ``threshold``.
    """
    n_boot = check_n_boot(n_boot)
    if not isinstance(min_group_size, int | np.integer) or min_group_size < 1:
        raise InputError(f"min_group_size must be a positive integer, got {min_group_size!r}")
    quantiles = check_ci(ci)
    layout, encoded = _prepare_inputs(
        y_true, y_score, groups, threshold, patient_ids, attribute, include_unknown=bool(include_unknown)
    )
    attribute = encoded.attribute
    names = layout.names
    point = _point(layout)
    boot = _bootstrap(layout, n_boot, seed) if n_boot > 0 else None

    counts = point["groups"]["n"][0]
    small = [
        f"'{name}' ({int(round(n))})" for name, n in zip(names, counts, strict=True) if n < min_group_size
    ]
    warnings = [
        f"group column '{column}': {count} missing value(s) read as '{UNKNOWN}'"
        for column, count in encoded.missing
    ]
    excluded = [
        f"'{name}' ({int(round(n))})"
        for name, n, c in zip(names, counts, layout.counted, strict=True)
        if not c
    ]
    if excluded:
        warnings.append(
            f"group(s) with an unknown attribute left out of the gaps and worst-group values: "
            f"{', '.join(excluded)}; they are reported as their own row (include_unknown counts them)"
        )
    if small:
        warnings.append(
            f"small group(s) with fewer than {min_group_size} predictions: {', '.join(small)}; their "
            "numbers and CIs rest on few predictions"
        )
    degenerate = degenerate_reason({k: v[0] for k, v in point["overall"].items()})
    if degenerate:
        warnings.append(f"{degenerate}: the gaps of such predictions say nothing about fairness")
    warnings += _undefined_warnings(point, names, layout.counted)
    if boot is not None:
        warnings += _replicate_warnings(point, boot, names, int(n_boot))
    for message in warnings:
        logger.warning(message)
    return {
        "task": "classification",
        "attribute": attribute,
        "threshold": float(threshold),
        "n_boot": int(n_boot),
        "min_group_size": int(min_group_size),
        "include_unknown": bool(include_unknown),
        "overall": _block(point["overall"], None if boot is None else boot["overall"], None, quantiles),
        "groups": {
            name: {
                **_block(point["groups"], None if boot is None else boot["groups"], i, quantiles),
                "small": bool(counts[i] < min_group_size),
                "excluded_from_gaps": not bool(layout.counted[i]),
            }
            for i, name in enumerate(names)
        },
        "gaps": {
            key: _entry(point["gaps"][key][0], None if boot is None else boot["gaps"][key], quantiles)
            for key in GAP_METRICS
        },
        "degenerate": None
        if degenerate is None
        else {
            "reason": degenerate,
            "balanced_accuracy": float(point["overall"]["balanced_accuracy"][0]),
            "selection_rate": float(point["overall"]["selection_rate"][0]),
        },
        "warnings": warnings,
    }


def choose_threshold(
    y_true: Any,
    y_score: Any,
    *,
    method: str = "youden",
    target_specificity: float | None = None,
) -> float:
    """Choose a decision threshold on **validation** predictions (never on the test set).

    Parameters
    ----------
    y_true, y_score
        Validation labels and scores.
    method
        ``"youden"``: maximise TPR − FPR (Youden's J); ``"f1"``: maximise F1; ``"specificity"``:
        the lowest threshold whose specificity is at least ``target_specificity`` (the most
        sensitive operating point that meets the target).
    target_specificity
        Required with ``method="specificity"``, in (0, 1].

    Returns
    -------
    float
        τ such that ŷ = 1[score ≥ τ]; it is one of the validation scores, or just above the largest
        one when no score meets a specificity target of 1.

    >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.8
    >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], method="f1")
    0.35
    """
    y = _as_binary_labels(y_true)
    s = _as_scores(y_score, len(y))
    n_pos = y.sum()
    if n_pos == 0 or n_pos == len(y):
        raise InputError("validation predictions need both classes to choose a threshold")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(1 - ys)[last]
    thresholds = ss[last]
    tpr, fpr = tp / n_pos, fp / (len(y) - n_pos)
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
    elif method == "f1":
        best = int(np.argmax(2 * tp / (tp + fp + n_pos)))
    elif method == "specificity":
        if target_specificity is None or not 0.0 < float(target_specificity) <= 1.0:
            raise InputError(
                f"method 'specificity' needs target_specificity in (0, 1], got {target_specificity!r}"
            )
        ok = np.flatnonzero(1 - fpr >= float(target_specificity) - 1e-12)
        if ok.size == 0:
            return float(np.nextafter(ss[0], np.inf))
        best = int(ok[-1])
    else:
        raise InputError(f"threshold method must be one of youden, f1, specificity; got {method!r}")
    return float(thresholds[best])
