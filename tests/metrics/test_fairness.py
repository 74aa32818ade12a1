"""Fairness metrics: cross-checks against scikit-learn and fairlearn, the bootstrap, edge cases."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from trustmed.errors import InputError
from trustmed.io import write_json
from trustmed.metrics import bootstrap, fairness
from trustmed.metrics.bootstrap import Bootstrap
from trustmed.metrics.fairness import (
    GAP_METRICS,
    GROUP_METRICS,
    choose_threshold,
    fairness_report,
    gaps,
    group_metrics,
)

TOL = 1e-9


def _data(seed: int, n: int = 600, k: int = 3, decimals: int | None = 2):
    rng = np.random.default_rng(seed)
    groups = rng.choice([f"g{i}" for i in range(k)], size=n, p=np.r_[0.5, np.full(k - 1, 0.5 / (k - 1))])
    y = rng.integers(0, 2, n)
    shift = np.array([0.1 * int(g[1:]) for g in groups])
    s = np.clip(0.3 * y + 0.6 * rng.random(n) + shift * 0.5, 0, 1)
    if decimals is not None:
        s = np.round(s, decimals)  # ties, within and across classes
    return y, s, groups


def _ece_loop(y, s, bins=15):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (s >= lo) & ((s < hi) if b < bins - 1 else (s <= hi))
        if m.any():
            total += m.sum() / len(s) * abs(y[m].mean() - s[m].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 2])
def test_point_estimates_match_sklearn(seed, decimals):
    y, s, groups = _data(seed, decimals=decimals)
    table = group_metrics(y, s, groups=groups, threshold=0.5)
    for name in [*np.unique(groups), "overall"]:
        m = np.ones(len(y), bool) if name == "overall" else groups == name
        yt, ys, yp = y[m], s[m], (s[m] >= 0.5).astype(int)
        row = table.loc[name]
        assert row["n"] == m.sum() and row["n_pos"] == yt.sum()
        assert abs(row["auc"] - roc_auc_score(yt, ys)) < TOL
        assert abs(row["ap"] - average_precision_score(yt, ys)) < TOL
        assert abs(row["accuracy"] - accuracy_score(yt, yp)) < TOL
        assert abs(row["balanced_accuracy"] - balanced_accuracy_score(yt, yp)) < TOL
        assert abs(row["bce"] - log_loss(yt, ys, labels=[0, 1])) < TOL
        assert abs(row["tpr"] - recall_score(yt, yp)) < TOL
        assert abs(row["fnr"] - (1 - recall_score(yt, yp))) < TOL
        assert abs(row["tnr"] - recall_score(yt, yp, pos_label=0)) < TOL
        assert abs(row["fpr"] - (1 - recall_score(yt, yp, pos_label=0))) < TOL
        assert abs(row["ppv"] - precision_score(yt, yp)) < TOL
        assert abs(row["selection_rate"] - yp.mean()) < TOL
        assert abs(row["prevalence"] - yt.mean()) < TOL
        assert abs(row["ece"] - _ece_loop(yt, ys)) < TOL


@pytest.mark.parametrize("k", [2, 3, 5])
def test_point_estimates_and_gaps_match_fairlearn(k):
    y, s, groups = _data(10 + k, n=900, k=k)
    yp = (s >= 0.4).astype(int)
    rep = fairness_report(y, s, groups=groups, threshold=0.4, n_boot=0)
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "accuracy": accuracy_score,
        },
        y_true=y,
        y_pred=yp,
        sensitive_features=groups,
    )
    for name, row in frame.by_group.iterrows():
        for key in row.index:
            assert abs(rep["groups"][name][key]["value"] - row[key]) < TOL
    for key in ("selection_rate", "tpr", "fpr", "accuracy"):
        assert abs(rep["overall"][key]["value"] - frame.overall[key]) < TOL
    dp = demographic_parity_difference(y, yp, sensitive_features=groups)
    eo = equalized_odds_difference(y, yp, sensitive_features=groups)
    assert abs(rep["gaps"]["dp_gap"]["value"] - dp) < TOL
    assert abs(rep["gaps"]["eodds_max_gap"]["value"] - eo) < TOL
    diff = frame.difference(method="between_groups")
    assert abs(rep["gaps"]["eopp_tpr_gap"]["value"] - diff["tpr"]) < TOL
    assert abs(rep["gaps"]["eopp_fpr_gap"]["value"] - diff["fpr"]) < TOL
    assert abs(rep["gaps"]["eodds_mean_gap"]["value"] - (diff["tpr"] + diff["fpr"]) / 2) < TOL
    assert abs(rep["gaps"]["worst_group_accuracy"]["value"] - frame.group_min()["accuracy"]) < TOL
    aucs = [roc_auc_score(y[groups == g], s[groups == g]) for g in np.unique(groups)]
    assert abs(rep["gaps"]["auc_gap"]["value"] - (max(aucs) - min(aucs))) < TOL
    assert abs(rep["gaps"]["worst_group_auc"]["value"] - min(aucs)) < TOL


def test_intersections_match_fairlearn_multiple_sensitive_features():
    rng = np.random.default_rng(3)
    n = 800
    attrs = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "age": rng.choice(["<40", "40-60", ">60"], n)})
    y = rng.integers(0, 2, n)
    s = rng.random(n)
    rep = fairness_report(y, s, groups=attrs, n_boot=0)
    assert rep["attribute"] == "sex&age"
    assert set(rep["groups"]) == {f"sex={a}&age={b}" for a in ("F", "M") for b in ("<40", "40-60", ">60")}
    yp = (s >= 0.5).astype(int)
    frame = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=yp, sensitive_features=attrs)
    for (sex, age), value in frame.by_group.items():
        assert abs(rep["groups"][f"sex={sex}&age={age}"]["tpr"]["value"] - value) < TOL
    assert (
        abs(rep["gaps"]["dp_gap"]["value"] - demographic_parity_difference(y, yp, sensitive_features=attrs))
        < TOL
    )
    # A mapping of columns gives the same groups as the DataFrame.
    again = fairness_report(y, s, groups={"sex": attrs["sex"], "age": attrs["age"]}, n_boot=0)
    assert again["groups"] == rep["groups"]


def test_gaps_helper_matches_report():
    y, s, groups = _data(4)
    table = group_metrics(y, s, groups=groups)
    rep = fairness_report(y, s, groups=groups, n_boot=0)
    for key, value in gaps(table).items():
        assert value == pytest.approx(rep["gaps"][key]["value"], abs=TOL)


def test_layout_and_json(tmp_path):
    y, s, groups = _data(5, n=300)
    rep = fairness_report(y, s, groups=groups, n_boot=50, attribute="skin_tone")
    assert list(rep) == [
        "task",
        "attribute",
        "threshold",
        "n_boot",
        "min_group_size",
        "include_unknown",
        "overall",
        "groups",
        "gaps",
        "degenerate",
        "warnings",
    ]
    assert all(group["small"] is False for group in rep["groups"].values())
    assert all(group["excluded_from_gaps"] is False for group in rep["groups"].values())
    assert rep["include_unknown"] is False and rep["degenerate"] is None
    assert rep["task"] == "classification" and rep["attribute"] == "skin_tone" and rep["n_boot"] == 50
    for block in [rep["overall"], *rep["groups"].values()]:
        assert isinstance(block["n"], int) and isinstance(block["n_pos"], int)
        for key in GROUP_METRICS:
            assert set(block[key]) == {"value", "ci"} and len(block[key]["ci"]) == 2
    assert list(rep["gaps"]) == list(GAP_METRICS)
    assert sum(rep["groups"][g]["n"] for g in rep["groups"]) == rep["overall"]["n"] == 300
    path = write_json(tmp_path / "metrics.json", rep)
    assert json.loads(path.read_text())["gaps"]["dp_gap"]["value"] == rep["gaps"]["dp_gap"]["value"]
    point_only = fairness_report(y, s, groups=groups, n_boot=0)
    assert set(point_only["gaps"]["auc_gap"]) == {"value"}


def test_undefined_values_are_nan_with_warnings(tmp_path):
    y, s, groups = _data(6, n=300)
    y = y.copy()
    y[groups == "g1"] = 0  # g1: no positives
    y[groups == "g2"] = 1  # g2: no negatives
    rep = fairness_report(y, s, groups=groups, n_boot=100)
    g1, g2 = rep["groups"]["g1"], rep["groups"]["g2"]
    for key in ("tpr", "fnr", "auc", "ap", "balanced_accuracy"):
        assert np.isnan(g1[key]["value"]), key
        assert all(np.isnan(c) for c in g1[key]["ci"]), key
    for key in ("fpr", "tnr", "auc"):
        assert np.isnan(g2[key]["value"]), key
    assert not np.isnan(g1["fpr"]["value"]) and not np.isnan(g2["tpr"]["value"])
    text = " | ".join(rep["warnings"])
    assert "group 'g1': no positives" in text and "group 'g2': no negatives" in text
    # Gaps use the defined groups only; the AUC gap has only g0 left, so it is undefined.
    table = group_metrics(y, s, groups=groups)
    tprs = table.loc[["g0", "g2"], "tpr"]
    assert rep["gaps"]["eopp_tpr_gap"]["value"] == pytest.approx(tprs.max() - tprs.min(), abs=TOL)
    assert np.isnan(rep["gaps"]["auc_gap"]["value"])
    assert rep["gaps"]["worst_group_auc"]["value"] == pytest.approx(table.loc["g0", "auc"], abs=TOL)
    assert any("auc_gap" in w and "'g1'" in w for w in rep["warnings"])
    written = json.loads(write_json(tmp_path / "m.json", rep).read_text())
    assert written["groups"]["g1"]["tpr"] == {"value": None, "ci": [None, None]}


def test_no_predicted_positives_gives_nan_ppv_not_zero():
    y, s, groups = _data(7, n=200)
    rep = fairness_report(y, s, groups=groups, threshold=1.0, n_boot=0)
    assert np.isnan(rep["overall"]["ppv"]["value"]) and rep["overall"]["selection_rate"]["value"] == 0.0
    assert any("ppv undefined" in w for w in rep["warnings"])


def test_weighted_replicate_equals_metrics_of_the_explicit_resample():
    y, s, groups = _data(8, n=400, k=3)
    layout, _ = fairness._prepare_inputs(y, s, groups, 0.5, None, None)
    # The columns of the layout, mapped back to rows of the input.
    codes, names, _ = fairness.encode_groups(groups, len(y))
    order = np.concatenate(
        [
            np.r_[
                np.flatnonzero((codes == g) & (y == 1))[
                    np.argsort(-s[(codes == g) & (y == 1)], kind="stable")
                ],
                np.flatnonzero((codes == g) & (y == 0))[
                    np.argsort(s[(codes == g) & (y == 0)], kind="stable")
                ],
            ]
            for g in range(len(names))
        ]
    )
    weights = Bootstrap(layout.n, strata=layout.strata, seed=0).draw(4)
    result = fairness._evaluate(layout, weights)
    for r in range(4):
        rows = order[np.repeat(np.arange(layout.n), weights[r].astype(int))]
        yr, sr, gr = y[rows], s[rows], groups[rows]
        assert result["overall"]["auc"][r] == pytest.approx(roc_auc_score(yr, sr), abs=TOL)
        assert result["overall"]["ap"][r] == pytest.approx(average_precision_score(yr, sr), abs=TOL)
        for g, name in enumerate(names):
            m = gr == name
            assert m.sum() == (groups == name).sum()  # stratified: group sizes are kept
            assert result["groups"]["auc"][r, g] == pytest.approx(roc_auc_score(yr[m], sr[m]), abs=TOL)
            assert result["groups"]["ap"][r, g] == pytest.approx(
                average_precision_score(yr[m], sr[m]), abs=TOL
            )
            assert result["groups"]["bce"][r, g] == pytest.approx(log_loss(yr[m], sr[m]), abs=TOL)
            assert result["groups"]["ece"][r, g] == pytest.approx(_ece_loop(yr[m], sr[m]), abs=TOL)


def test_bootstrap_is_stratified_and_clusters_keep_patients_whole():
    rng = np.random.default_rng(9)
    n_patients = 60
    patient = np.repeat(np.arange(n_patients), rng.integers(1, 5, n_patients))
    group = np.where(patient % 3 == 0, "a", "b")
    n = len(patient)
    y, s = rng.integers(0, 2, n), rng.random(n)
    layout, _ = fairness._prepare_inputs(y, s, group, 0.5, patient, None)
    weights = Bootstrap(layout.n, strata=layout.strata, clusters=layout.clusters, seed=0).draw(200)
    for g in range(2):
        lo, hi = layout.offsets[g], layout.offsets[g + 1]
        clusters = pd.factorize(layout.clusters[lo:hi])[0]
        block = weights[:, lo:hi]
        for c in range(clusters.max() + 1):
            cols = block[:, clusters == c]
            assert (cols == cols[:, :1]).all()  # every image of a patient has the patient's weight
        # Each replicate draws as many patients as the group has.
        first = np.array([np.flatnonzero(clusters == c)[0] for c in range(clusters.max() + 1)])
        assert (block[:, first].sum(axis=1) == clusters.max() + 1).all()
    plain, _ = fairness._prepare_inputs(y, s, group, 0.5, None, None)
    w = Bootstrap(plain.n, strata=plain.strata, seed=0).draw(200)
    for g in range(2):
        lo, hi = plain.offsets[g], plain.offsets[g + 1]
        assert (w[:, lo:hi].sum(axis=1) == hi - lo).all()


def test_clustered_ci_is_wider_when_patients_have_duplicate_images():
    y, s, groups = _data(11, n=300, decimals=None)
    copies = 5
    y5, s5, g5 = np.repeat(y, copies), np.repeat(s, copies), np.repeat(groups, copies)
    patients = np.repeat(np.arange(len(y)), copies)
    naive = fairness_report(y5, s5, groups=g5, n_boot=300, seed=1)
    clustered = fairness_report(y5, s5, groups=g5, n_boot=300, seed=1, patient_ids=patients)
    for key in ("auc", "accuracy", "tpr"):
        w_naive = np.diff(naive["overall"][key]["ci"])[0]
        w_clustered = np.diff(clustered["overall"][key]["ci"])[0]
        assert w_clustered > 1.8 * w_naive, key  # about sqrt(5) wider
        assert naive["overall"][key]["value"] == clustered["overall"][key]["value"]
    w_gap = np.diff(clustered["gaps"]["eodds_max_gap"]["ci"])[0]
    assert w_gap > 1.5 * np.diff(naive["gaps"]["eodds_max_gap"]["ci"])[0]


def test_seed_determinism_and_chunking():
    y, s, groups = _data(12, n=500)
    a = fairness_report(y, s, groups=groups, n_boot=120, seed=3)
    b = fairness_report(y, s, groups=groups, n_boot=120, seed=3)
    c = fairness_report(y, s, groups=groups, n_boot=120, seed=4)
    assert a == b
    assert a["gaps"]["dp_gap"]["ci"] != c["gaps"]["dp_gap"]["ci"]


def test_chunk_size_does_not_change_results(monkeypatch):
    y, s, groups = _data(13, n=300)
    whole = fairness_report(y, s, groups=groups, n_boot=60, seed=0)
    monkeypatch.setattr(bootstrap, "_CHUNK_ENTRIES", 300 * 7)
    chunked = fairness_report(y, s, groups=groups, n_boot=60, seed=0)
    # Equal up to the summation order of the matrix products.
    assert np.allclose(_leaves(whole), _leaves(chunked), rtol=0, atol=1e-12, equal_nan=True)


def _leaves(report):
    blocks = [report["overall"], *report["groups"].values()]
    values = [[b[k]["value"], *b[k]["ci"]] for b in blocks for k in GROUP_METRICS]
    values += [[v["value"], *v["ci"]] for v in report["gaps"].values()]
    return np.asarray(values, dtype=float)


def test_cis_contain_point_estimates_on_a_reasonable_sample():
    y, s, groups = _data(14, n=3000, decimals=None)
    rep = fairness_report(y, s, groups=groups, n_boot=400)
    blocks = [rep["overall"], *rep["groups"].values()]
    for block in blocks:
        for key in GROUP_METRICS:
            lo, hi = block[key]["ci"]
            assert lo <= block[key]["value"] <= hi, key
    # A gap near 0 (here auc_gap) is biased upwards under resampling, so its percentile interval can
    # sit above the point estimate; gaps that are clearly non-zero and worst-group values are checked.
    for key in ("dp_gap", "eodds_max_gap", "worst_group_auc", "worst_group_accuracy"):
        lo, hi = rep["gaps"][key]["ci"]
        assert lo <= rep["gaps"][key]["value"] <= hi and lo < hi, key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_true": [0, 2, 1, 0]}, "labels must be 0/1"),
        ({"y_true": ["a", "b", "a", "b"]}, "labels must be 0/1"),
        ({"y_score": [0.1, np.nan, 0.3, 0.4]}, "NaN"),
        ({"y_score": [0.1, 1.2, 0.3, 0.4]}, "must be in [0, 1]"),
        ({"groups": ["a", "a", "a", "a"]}, "only one group"),
        ({"groups": ["a", "b", "a"]}, "length 3 does not match"),
        ({"y_score": [0.1, 0.2]}, "length 2 does not match"),
        ({"y_true": [], "y_score": [], "groups": []}, "empty"),
        ({"groups": ["a", None, "unknown", "a"]}, "only 1 group with a known attribute ('a')"),
        ({"n_boot": -1}, "n_boot"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
def test_bad_input_raises_input_error(kwargs, message):
    args = {"y_true": [0, 1, 1, 0], "y_score": [0.1, 0.8, 0.3, 0.4], "groups": ["a", "b", "a", "b"]}
    args.update(kwargs)
    y_true, y_score = args.pop("y_true"), args.pop("y_score")
    with pytest.raises(InputError, match=re.escape(message)):
        fairness_report(y_true, y_score, **args)


def _rates(y, s, t):
    yp = s >= t
    tp, fp = (yp & (y == 1)).sum(), (yp & (y == 0)).sum()
    return tp, fp, y.sum() - tp, (y == 0).sum() - fp


def _youden(y, s, t):
    tp, fp, fn, tn = _rates(y, s, t)
    return tp / (tp + fn) - fp / (fp + tn)


def _f1(y, s, t):
    tp, fp, fn, _ = _rates(y, s, t)
    return 2 * tp / (2 * tp + fp + fn)


def _specificity(y, s, t):
    _, fp, _, tn = _rates(y, s, t)
    return tn / (tn + fp)


@pytest.mark.parametrize("seed", [0, 1])
def test_choose_threshold_against_brute_force(seed):
    y, s, _ = _data(seed, n=300)
    candidates = np.unique(s)
    for method, score in (("youden", _youden), ("f1", _f1)):
        best = max(score(y, s, t) for t in candidates)
        chosen = choose_threshold(y, s, method=method)
        assert chosen in candidates
        assert score(y, s, chosen) == pytest.approx(best, abs=TOL)
        # Cross-check one value with scikit-learn.
        yp = (s >= chosen).astype(int)
        assert _youden(y, s, chosen) == pytest.approx(balanced_accuracy_score(y, yp) * 2 - 1, abs=TOL)
    for target in (0.8, 0.95, 1.0):
        chosen = choose_threshold(y, s, method="specificity", target_specificity=target)
        assert _specificity(y, s, chosen) >= target - TOL
        lower = s[s < chosen]
        if lower.size:  # the next lower threshold would miss the target
            assert _specificity(y, s, lower.max()) < target


def test_choose_threshold_errors():
    with pytest.raises(InputError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(InputError, match="target_specificity"):
        choose_threshold([0, 1], [0.2, 0.3], method="specificity")
    with pytest.raises(InputError, match="youden, f1, specificity"):
        choose_threshold([0, 1], [0.2, 0.3], method="mcc")
