"""Property tests of the fairness metrics: invariances, bounds, and bootstrap behaviour."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustmed.metrics.fairness import GAP_METRICS, GROUP_METRICS, fairness_report

RATES = (
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
)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def predictions(draw, min_n=8, max_n=60):
    n = draw(st.integers(min_n, max_n))
    k = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    groups = np.r_[np.arange(k), rng.integers(0, k, n - k)]  # every group present
    y = rng.integers(0, 2, n)
    s = np.round(rng.random(n), draw(st.integers(1, 4)))
    threshold = draw(st.sampled_from([0.3, 0.5, 0.7]))
    return y, s, np.array([f"g{g}" for g in groups]), threshold


def _close(a, b):
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) < 1e-12


@SETTINGS
@given(predictions(), st.randoms(use_true_random=False))
def test_invariant_to_row_order(data, random):
    y, s, groups, threshold = data
    perm = np.arange(len(y))
    random.shuffle(perm)
    a = fairness_report(y, s, groups=groups, threshold=threshold, n_boot=0)
    b = fairness_report(y[perm], s[perm], groups=groups[perm], threshold=threshold, n_boot=0)
    for name in a["groups"]:
        for key in GROUP_METRICS:
            assert _close(a["groups"][name][key]["value"], b["groups"][name][key]["value"]), key
    for key in GAP_METRICS:
        assert _close(a["gaps"][key]["value"], b["gaps"][key]["value"]), key


@SETTINGS
@given(predictions())
def test_invariant_to_group_relabelling(data):
    y, s, groups, threshold = data
    names = sorted(set(groups))
    mapping = {old: f"z{len(names) - i}" for i, old in enumerate(names)}  # reverses the order
    relabelled = np.array([mapping[g] for g in groups])
    a = fairness_report(y, s, groups=groups, threshold=threshold, n_boot=0)
    b = fairness_report(y, s, groups=relabelled, threshold=threshold, n_boot=0)
    for old, new in mapping.items():
        for key in GROUP_METRICS:
            assert _close(a["groups"][old][key]["value"], b["groups"][new][key]["value"]), key
    for key in GAP_METRICS:
        assert _close(a["gaps"][key]["value"], b["gaps"][key]["value"]), key


@SETTINGS
@given(predictions())
def test_bounds(data):
    y, s, groups, threshold = data
    rep = fairness_report(y, s, groups=groups, threshold=threshold, n_boot=20, seed=1)
    for block in [rep["overall"], *rep["groups"].values()]:
        for key in RATES:
            for v in [block[key]["value"], *block[key]["ci"]]:
                assert np.isnan(v) or -1e-12 <= v <= 1 + 1e-12, key
        assert block["bce"]["value"] >= 0
    for key in GAP_METRICS:
        for v in [rep["gaps"][key]["value"], *rep["gaps"][key]["ci"]]:
            assert np.isnan(v) or -1e-12 <= v <= 1 + 1e-12, key
    for key in ("eodds_max_gap", "eodds_mean_gap"):
        v, tpr, fpr = (rep["gaps"][k]["value"] for k in (key, "eopp_tpr_gap", "eopp_fpr_gap"))
        if not (np.isnan(tpr) or np.isnan(fpr)):
            assert min(tpr, fpr) - 1e-12 <= v <= max(tpr, fpr) + 1e-12


@SETTINGS
@given(predictions(min_n=40, max_n=120), st.integers(0, 1000))
def test_same_seed_same_cis_and_intervals_ordered(data, seed):
    y, s, groups, threshold = data
    a = fairness_report(y, s, groups=groups, threshold=threshold, n_boot=30, seed=seed)
    b = fairness_report(y, s, groups=groups, threshold=threshold, n_boot=30, seed=seed)
    for name in a["groups"]:
        for key in GROUP_METRICS:
            ci_a, ci_b = a["groups"][name][key]["ci"], b["groups"][name][key]["ci"]
            assert np.array_equal(ci_a, ci_b, equal_nan=True)
            assert np.isnan(ci_a[0]) or ci_a[0] <= ci_a[1]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4))
def test_cis_of_group_means_contain_the_point_estimate(seed, k):
    rng = np.random.default_rng(seed)
    n = 400
    groups = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    y = rng.integers(0, 2, n)
    s = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    rep = fairness_report(y, s, groups=groups, n_boot=200, seed=seed % 1000)
    for block in [rep["overall"], *rep["groups"].values()]:
        for key in ("prevalence", "accuracy", "selection_rate", "tpr", "fpr", "auc", "bce"):
            lo, hi = block[key]["ci"]
            assert lo <= block[key]["value"] <= hi, key
