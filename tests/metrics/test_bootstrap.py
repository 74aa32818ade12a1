"""The shared bootstrap (stratified, clustered, seeded weights; percentile intervals) used by every metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustmed.errors import InputError
from trustmed.metrics import bootstrap
from trustmed.metrics.bootstrap import Bootstrap, check_ci, check_n_boot, percentile_ci
from trustmed.metrics.grounding import summarize
from trustmed.metrics.robustness import robustness_metrics


def test_strata_keep_their_size_in_any_order():
    strata = np.array(["b", "a", "b", "c", "a", "b"])
    w = Bootstrap(6, strata=strata, seed=0).draw(300)
    for g in "abc":
        np.testing.assert_array_equal(w[:, strata == g].sum(axis=1), (strata == g).sum())
    assert (w[:, strata == "c"] == 1).all()  # a group of one is itself in every replicate
    assert (
        w[:, strata != "c"].var(axis=0) > 0
    ).all()  # the others are sometimes left out, sometimes repeated
    unstratified = Bootstrap(6, seed=0).draw(300)
    assert (unstratified.sum(axis=1) == 6).all() and (unstratified[:, strata == "c"].sum(axis=1) != 1).any()


def test_clusters_move_together_within_strata():
    strata = np.array(["a"] * 5 + ["b"] * 3)
    patients = np.array(["p", "q", "p", "r", "q", "s", "s", "t"])
    w = Bootstrap(8, strata=strata, clusters=patients, seed=1).draw(200)
    for cols in ([0, 2], [1, 4], [5, 6]):
        assert (w[:, cols] == w[:, cols[:1]]).all()
    # each stratum draws as many patients as it has: a has p, q, r; b has s, t
    np.testing.assert_array_equal(w[:, [0, 1, 3]].sum(axis=1), 3)
    np.testing.assert_array_equal(w[:, [5, 7]].sum(axis=1), 2)


def test_seeded_and_chunking_gives_the_same_replicates(monkeypatch):
    strata = np.random.default_rng(0).integers(0, 3, 50)
    once = Bootstrap(50, strata=strata, seed=7).draw(40)
    np.testing.assert_array_equal(once, Bootstrap(50, strata=strata, seed=7).draw(40))
    assert not np.array_equal(once, Bootstrap(50, strata=strata, seed=8).draw(40))
    monkeypatch.setattr(bootstrap, "_CHUNK_ENTRIES", 50 * 7)
    chunks = list(Bootstrap(50, strata=strata, seed=7).chunks(40))
    assert [len(c) for c in chunks] == [7] * 5 + [5]
    np.testing.assert_array_equal(np.concatenate(chunks), once)


def test_percentile_ci_and_checks():
    samples = np.r_[np.arange(101.0), np.nan, np.nan]
    assert percentile_ci(samples, (0.1, 0.9)) == pytest.approx([10.0, 90.0])
    assert all(np.isnan(percentile_ci(np.array([np.nan]), (0.025, 0.975))))
    assert check_ci([0.05, 0.95]) == (0.05, 0.95) and check_n_boot(np.int64(3)) == 3
    for bad in ((0.9, 0.1), (0.0, 1.5), "x", (0.1,)):
        with pytest.raises(InputError, match="ci must be two quantiles"):
            check_ci(bad)
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(InputError, match="n_boot must be a non-negative integer"):
            check_n_boot(bad)
    with pytest.raises(InputError, match="strata: expected one value per sample"):
        Bootstrap(3, strata=["a", "b"])
    with pytest.raises(InputError, match="clusters: missing value at sample 1"):
        Bootstrap(2, clusters=["p", None])


def test_robustness_intervals_come_from_the_shared_resampling():
    rng = np.random.default_rng(2)
    groups = rng.choice(["a", "b"], 200, p=[0.7, 0.3])
    patients = rng.integers(0, 80, 200).astype(str)
    y, pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    m = robustness_metrics(y, pred, groups=groups, patient_ids=patients, n_boot=300, seed=5, ci=(0.05, 0.95))
    w = Bootstrap(200, strata=groups, clusters=patients, seed=5).draw(300)
    correct = (y == pred).astype(float)
    assert m["acc_avg"]["ci"] == pytest.approx(percentile_ci(w @ correct / w.sum(axis=1), (0.05, 0.95)))
    with pytest.raises(InputError, match="ci must be two quantiles"):
        robustness_metrics(y, pred, groups=groups, ci=(0.9, 0.1))
    with pytest.raises(InputError, match="n_boot"):
        robustness_metrics(y, pred, groups=groups, n_boot=-5)


def test_grounding_intervals_come_from_the_shared_resampling():
    values = np.random.default_rng(3).random(60)
    table = pd.DataFrame({"category": ["a", "b", "c"] * 20, "miou": values})
    r = summarize(table, metrics=["miou"], n_boot=250, seed=4)
    w = Bootstrap(60, seed=4).draw(250)
    assert r["overall"]["miou"]["ci"] == pytest.approx(
        percentile_ci(w @ values / w.sum(axis=1), (0.025, 0.975))
    )
    with pytest.raises(InputError, match="ci must be two quantiles"):
        summarize(table, metrics=["miou"], ci=(0.5, 0.5))
