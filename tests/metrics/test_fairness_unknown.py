"""The one rule for an unknown attribute, and the one detection of degenerate predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustmed.metrics.fairness import (
    degenerate_reason,
    fairness_report,
    gaps,
    group_metrics,
    is_unknown_group,
)


def _data(seed: int = 0, n: int = 600):
    """Two known groups of similar quality, and an unknown group the model gets badly wrong."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(["light", "dark", "unknown"], n, p=[0.45, 0.4, 0.15])
    y = rng.integers(0, 2, n)
    noise = rng.random(n)
    s = np.clip(0.35 * y + 0.65 * noise, 0, 1)
    bad = groups == "unknown"
    s[bad] = np.clip(0.9 - 0.6 * y[bad] + 0.1 * noise[bad], 0, 1)  # inverted: the worst group
    return y, s, groups


def test_unknown_group_is_reported_but_left_out_of_the_gaps():
    y, s, groups = _data()
    rep = fairness_report(y, s, groups=groups, n_boot=0)
    known = groups != "unknown"
    only_known = fairness_report(y[known], s[known], groups=groups[known], n_boot=0)
    assert rep["groups"]["unknown"]["excluded_from_gaps"] is True
    assert rep["groups"]["light"]["excluded_from_gaps"] is False
    assert rep["groups"]["unknown"]["n"] == int((~known).sum())
    for key, entry in rep["gaps"].items():
        assert entry["value"] == pytest.approx(only_known["gaps"][key]["value"], abs=1e-12), key
    # overall keeps every row
    assert rep["overall"]["n"] == len(y)
    assert any("left out of the gaps" in w and "'unknown'" in w for w in rep["warnings"])


def test_include_unknown_counts_it_and_changes_the_gap_when_it_is_the_worst_group():
    y, s, groups = _data()
    default = fairness_report(y, s, groups=groups, n_boot=0)
    counted = fairness_report(y, s, groups=groups, n_boot=0, include_unknown=True)
    assert counted["include_unknown"] is True
    assert counted["groups"]["unknown"]["excluded_from_gaps"] is False
    assert counted["gaps"]["worst_group_auc"]["value"] == pytest.approx(
        counted["groups"]["unknown"]["auc"]["value"]
    )
    assert counted["gaps"]["auc_gap"]["value"] > default["gaps"]["auc_gap"]["value"] + 0.3
    assert counted["gaps"]["worst_group_auc"]["value"] < default["gaps"]["worst_group_auc"]["value"]


def test_bootstrap_gaps_leave_the_unknown_group_out_too():
    y, s, groups = _data(1)
    rep = fairness_report(y, s, groups=groups, n_boot=200, seed=0)
    counted = fairness_report(y, s, groups=groups, n_boot=200, seed=0, include_unknown=True)
    lo, hi = rep["gaps"]["worst_group_auc"]["ci"]
    assert lo > counted["gaps"]["worst_group_auc"]["ci"][1]  # the inverted unknown group is never the min
    assert lo <= rep["gaps"]["worst_group_auc"]["value"] <= hi


def test_missing_values_read_as_unknown_with_one_warning():
    y, s, groups = _data(2)
    as_none = np.where(groups == "unknown", None, groups).astype(object)
    rep = fairness_report(y, s, groups=as_none, n_boot=0, attribute="sex")
    reference = fairness_report(y, s, groups=groups, n_boot=0, attribute="sex")
    assert rep["groups"] == reference["groups"] and rep["gaps"] == reference["gaps"]
    missing = [w for w in rep["warnings"] if "missing value" in w]
    assert missing == [
        f"group column 'sex': {int((groups == 'unknown').sum())} missing value(s) read as 'unknown'"
    ]
    # missing values and the string "unknown" in one column are the same group
    mixed = as_none.copy()
    mixed[np.flatnonzero(groups == "unknown")[:3]] = "unknown"
    assert (
        fairness_report(y, s, groups=mixed, n_boot=0)["groups"]["unknown"]["n"]
        == rep["groups"]["unknown"]["n"]
    )


def test_intersections_with_an_unknown_part_are_excluded():
    y, s, groups = _data(3)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"sex": groups, "age_bin": rng.choice(["18-59", "60-74"], len(y))})
    frame.loc[:9, "age_bin"] = None  # a few missing ages
    rep = fairness_report(y, s, groups=frame, n_boot=0)
    excluded = {name for name, g in rep["groups"].items() if g["excluded_from_gaps"]}
    assert "sex=unknown&age_bin=60-74" in excluded and "sex=light&age_bin=18-59" not in excluded
    assert all("unknown" in name for name in excluded)
    assert all(("unknown" in name) == (name in excluded) for name in rep["groups"])
    known = ~(frame["sex"].eq("unknown") | frame["age_bin"].isna()).to_numpy()
    only_known = fairness_report(y[known], s[known], groups=frame[known], n_boot=0)
    assert rep["gaps"]["eodds_max_gap"]["value"] == pytest.approx(
        only_known["gaps"]["eodds_max_gap"]["value"]
    )
    assert is_unknown_group("sex=F&age_bin=unknown") and not is_unknown_group("sex=F&age_bin=60-74")


def test_gaps_helper_applies_the_same_rule():
    y, s, groups = _data(4)
    table = group_metrics(y, s, groups=groups)
    assert "unknown" in table.index
    for include in (False, True):
        rep = fairness_report(y, s, groups=groups, n_boot=0, include_unknown=include)
        for key, value in gaps(table, include_unknown=include).items():
            assert value == pytest.approx(rep["gaps"][key]["value"], abs=1e-12), (include, key)


def test_one_known_group_is_not_enough_unless_unknown_counts():
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.4, 0.6, 0.3, 0.2])
    g = ["a", "a", "a", None, "unknown", "unknown"]
    from trustmed.errors import InputError

    with pytest.raises(InputError, match="only 1 group with a known attribute"):
        fairness_report(y, s, groups=g, n_boot=0)
    rep = fairness_report(y, s, groups=g, n_boot=0, include_unknown=True)
    assert set(rep["groups"]) == {"a", "unknown"} and not np.isnan(rep["gaps"]["dp_gap"]["value"])


def test_constant_predictions_are_flagged_and_healthy_ones_are_not():
    y, s, groups = _data(5)
    constant = fairness_report(y, np.full(len(y), 0.2), groups=groups, n_boot=0)
    assert constant["degenerate"]["reason"] == "constant predictions (all negative, balanced accuracy 0.500)"
    assert constant["gaps"]["dp_gap"]["value"] == 0.0  # the clean-looking gap the flag explains
    assert any(w.startswith("constant predictions") for w in constant["warnings"])
    known = groups != "unknown"
    healthy = fairness_report(y[known], s[known], groups=groups[known], n_boot=0)
    assert healthy["degenerate"] is None
    assert not any("constant" in w or "chance" in w for w in healthy["warnings"])
    assert degenerate_reason({"selection_rate": 1.0, "balanced_accuracy": float("nan")}) == (
        "constant predictions (all positive, balanced accuracy undefined)"
    )
    assert degenerate_reason({"selection_rate": 0.3, "balanced_accuracy": 0.5009}).startswith(
        "predictions no better than chance"
    )
    assert degenerate_reason({"selection_rate": 0.3, "balanced_accuracy": 0.502}) is None
