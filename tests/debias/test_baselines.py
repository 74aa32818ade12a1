"""Baselines of post-hoc debiasing, the comparison's selection rule and its table."""

import numpy as np
import pandas as pd
import pytest
import torch

from trustmed.debias.bmft import BMFT
from trustmed.debias.data import GroupedSet, subsample
from trustmed.debias.fairprune import FairPrune
from trustmed.debias.finetune import FineTune
from trustmed.debias.losses import bias_loss_from_probs
from trustmed.debias.retrain import RetrainFair
from trustmed.debias.selection import compare_methods, select_setting
from trustmed.debias.tables import comparison_table, dominating_methods
from trustmed.debias.thresholds import GroupThresholds
from trustmed.errors import InputError
from trustmed.models import ModelSpec, build_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=4))


def _data(n: int = 96, seed: int = 0) -> GroupedSet:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    groups = rng.choice(["light", "dark"], n)
    images = torch.as_tensor(rng.normal(size=(n, 3, 8, 8)), dtype=torch.float32)
    images += torch.as_tensor(labels, dtype=torch.float32).view(-1, 1, 1, 1)
    return GroupedSet(images, labels, groups, attribute="tone")


def _state(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fair", [False, True])
def test_finetune_moves_every_part_and_leaves_the_input(fair):
    model = _model()
    before = _state(model)
    tuned = FineTune(fair=fair, lr=0.05, epochs=2, batch_size=16).fit(model, _data())
    after = _state(tuned.model_)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["extractor.0.weight"], before["extractor.0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    assert tuned.cost_["epochs"] == 2 and tuned.cost_["samples_seen"] == 2 * tuned.n_balanced_


def test_finetune_fair_adds_the_bias_loss():
    plain = FineTune(lr=0.05, epochs=1, batch_size=16).fit(_model(), _data())
    fair = FineTune(fair=True, lam=5.0, lr=0.05, epochs=1, batch_size=16).fit(_model(), _data())
    assert plain.history_[0]["train_loss"] != pytest.approx(fair.history_[0]["train_loss"])


def test_bmft_hard_mask_and_reinitialised_head():
    model = _model()
    bmft = BMFT(unlearn_epochs=1, n_epochs=0, lr_forget=0.05, batch_size=32, seed=4).fit(model, _data())
    # The head has no mask (it is re-initialised); every extractor tensor has one, 0/1.
    assert set(bmft.mask_) == {n for n, _ in model.named_parameters() if n.startswith("extractor.")}
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in bmft.mask_.values())
    torch.manual_seed(4)
    fresh = torch.nn.Linear(model.head.in_features, 1)
    assert torch.equal(bmft.model_.head.weight.cpu(), fresh.weight)
    assert not torch.equal(bmft.model_.head.weight.cpu(), model.head.weight)


def _tabular(weight):
    """``head(x)`` with an identity extractor: scores are ``weight · x``."""
    from trustmed.models.classifier import Classifier

    head = torch.nn.Linear(len(weight), 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([weight]))
        head.bias.zero_()
    return Classifier(torch.nn.Identity(), head)


def test_fairprune_prunes_the_lowest_saliency_computed_by_hand():
    w = np.array([1.0, -0.5, 2.0])
    # Three groups, scores w·x: group a ranks its labels perfectly (AUC 1), b inversely (AUC 0),
    # c in between, so unprivileged = b and privileged = a (c is not used).
    x = np.array(
        [
            [2.0, 0.0, 0.5],
            [0.0, 1.0, 0.0],
            [1.0, -1.0, 1.0],
            [-1.0, 0.0, -0.5],  # a
            [0.0, 2.0, -1.0],
            [1.5, 0.0, 0.5],
            [0.0, 0.0, -0.5],
            [0.5, 1.0, 1.0],  # b
            [1.0, 0.0, 0.0],
            [0.0, 0.0, 0.5],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],  # c
        ]
    )
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1])
    groups = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    data = GroupedSet(torch.tensor(x, dtype=torch.float32), y, groups, attribute="tone")
    beta = 0.5
    pruned = FairPrune(prune_ratio=1 / 3, beta=beta, batch_size=64).fit(_tabular(w.tolist()), data)
    assert (pruned.history_["unprivileged"], pruned.history_["privileged"]) == ("b", "a")

    def fisher(rows):  # one batch: the squared gradient of the mean BCE with respect to w
        p = 1 / (1 + np.exp(-(x[rows] @ w)))
        return (((p - y[rows])[:, None] * x[rows]).mean(0)) ** 2

    saliency = 0.5 * w**2 * (fisher(groups == "b") - beta * fisher(groups == "a"))
    np.testing.assert_allclose(pruned.saliency_["head.weight"].numpy().ravel(), saliency, rtol=1e-5)
    expected_keep = np.ones(3)
    expected_keep[np.argmin(saliency)] = 0.0
    assert set(pruned.mask_) == {"head.weight"}
    assert pruned.mask_["head.weight"].numpy().ravel().tolist() == expected_keep.tolist()
    kept = pruned.model_.head.weight.detach().numpy().ravel()
    assert kept.tolist() == (w * expected_keep).astype(np.float32).tolist()


def test_group_thresholds_equalise_odds_on_their_data():
    rng = np.random.default_rng(0)
    n = 2000
    groups = rng.choice(["a", "b"], n)
    labels = rng.integers(0, 2, n)
    scores = np.clip(0.35 * labels + 0.45 * rng.random(n) + 0.25 * (groups == "a"), 0, 1)
    gt = GroupThresholds(seed=0).fit_scores(scores, labels, groups)
    assert GroupThresholds.needs_attribute_at_prediction

    def gap(pred):
        g = torch.as_tensor((groups == "a").astype(int))
        return float(
            bias_loss_from_probs(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(labels), g)
        )

    assert gap(gt.decide(scores, groups)) < 0.5 * gap((scores >= 0.5).astype(float))
    with pytest.raises(InputError, match="not in the external set"):
        gt.decide(scores[:3], np.array(["a", "b", "c"]))


def test_group_thresholds_saved_and_loaded_decide_alike(tmp_path):
    rng = np.random.default_rng(1)
    n = 1500
    groups = rng.choice(["a", "b", "c"], n)
    labels = rng.integers(0, 2, n)
    scores = np.clip(0.3 * labels + 0.5 * rng.random(n) + 0.2 * (groups == "a"), 0, 1)
    gt = GroupThresholds("site", seed=3).fit_scores(scores, labels, groups)
    # the plain-number rules reproduce fairlearn's decision probabilities exactly
    fairlearn_p = gt.optimizer_._pmf_predict(scores.reshape(-1, 1), sensitive_features=groups)[:, 1]
    np.testing.assert_allclose(gt.probability(scores, groups), fairlearn_p, atol=1e-12)
    loaded = GroupThresholds.load(gt.save(tmp_path / "thresholds.json"))
    assert loaded.groups_ == ["a", "b", "c"] and loaded.attribute == "site" and loaded.seed == 3
    np.testing.assert_allclose(loaded.probability(scores, groups), fairlearn_p, atol=1e-12)
    # the loaded thresholds draw decisions from those probabilities: equal rates per group
    many = np.tile(scores, 20)
    many_groups = np.tile(groups, 20)
    decided = loaded.decide(many, many_groups)
    assert set(np.unique(decided)) <= {0.0, 1.0}
    for g in "abc":
        at = many_groups == g
        assert abs(decided[at].mean() - loaded.probability(many[at], many_groups[at]).mean()) < 0.02
    with pytest.raises(InputError, match="not in the external set"):
        loaded.decide(scores[:2], np.array(["a", "z"]))
    (tmp_path / "bad.json").write_text('{"rules": {"a": {"p0": 1}}}')
    with pytest.raises(InputError, match="bad.json: not a group thresholds file"):
        GroupThresholds.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        GroupThresholds.load(tmp_path / "missing.json")


def test_retrain_fair_starts_from_scratch_with_the_erm_schedule():
    model = _model()
    schedule = {
        "optim": {"name": "sgd", "lr": 0.01, "epochs": 2, "cosine": True, "weight_decay": 0.0},
        "data": {"batch_size": 32, "augment": True},
        "seed": 5,
    }
    retrain = RetrainFair.from_train_config(schedule, lam=2.0)
    assert (retrain.epochs, retrain.optimizer, retrain.batch_size, retrain.augment, retrain.lam) == (
        2,
        "sgd",
        32,
        True,
        2.0,
    )
    fitted = retrain.fit(model, _data(), _data(seed=1))
    assert fitted.cost_["epochs"] == 2 and fitted.cost_["samples_seen"] == 2 * 96
    untrained = RetrainFair(epochs=0, seed=7).fit(model, _data())
    assert not torch.equal(untrained.model_.head.weight.cpu(), model.head.weight)


def test_selection_guard_rejects_collapsed_models():
    reference = {"auc": 0.80, "balanced_accuracy": 0.70}
    search = [
        {"auc": 0.80, "balanced_accuracy": 0.50, "eodds_mean_gap": 0.0},  # one class: gap 0, fails guard
        {"auc": 0.79, "balanced_accuracy": 0.69, "eodds_mean_gap": 0.20},
        {"auc": 0.785, "balanced_accuracy": 0.685, "eodds_mean_gap": 0.10},
        {"auc": 0.70, "balanced_accuracy": 0.70, "eodds_mean_gap": 0.05},  # AUC too low
    ]
    assert select_setting(search, reference, 0.02, "eodds_mean_gap") == (2, True)
    assert select_setting(search[:1] + search[3:], reference, 0.02, "eodds_mean_gap") == (1, False)


def test_dominance_needs_non_overlapping_cis():
    def row(method, auc, lo, hi, gap, glo, ghi, attr=False):
        return {
            "method": method,
            "split": "test",
            "threshold": "0.5",
            "auc": auc,
            "auc_lo": lo,
            "auc_hi": hi,
            "eodds_mean_gap": gap,
            "eodds_mean_gap_lo": glo,
            "eodds_mean_gap_hi": ghi,
            "needs_attribute_at_prediction": attr,
        }

    table = pd.DataFrame(
        [
            row("swift", 0.70, 0.68, 0.72, 0.20, 0.15, 0.25),
            row("finetune", 0.75, 0.73, 0.77, 0.10, 0.05, 0.14),  # dominates beyond CIs
            row("bmft", 0.75, 0.71, 0.79, 0.10, 0.05, 0.16),  # overlapping AUC CI
            row("group_thresholds", 0.80, 0.79, 0.81, 0.01, 0.0, 0.02, attr=True),  # needs the attribute
        ]
    )
    assert dominating_methods(table, "swift") == ["finetune"]


def test_subsample_is_stratified_and_seeded():
    data = _data(n=400)
    small = subsample(data, 40, seed=0)
    assert 40 <= len(small) <= 44
    cells = {(g, y) for g, y in zip(small.groups.tolist(), small.labels.tolist(), strict=True)}
    assert len(cells) == 4
    assert np.array_equal(small.labels, subsample(data, 40, seed=0).labels)


def test_compare_runs_every_requested_method_and_flags_attribute_use():
    sets = {"external": _data(64, 0), "val": _data(64, 1), "test": _data(64, 2), "train": _data(96, 3)}
    comparison = compare_methods(
        _model(),
        sets,
        methods=["erm", "swift", "swift_nomask", "fairprune", "retrain_fair", "group_thresholds"],
        grids={"swift": [{"batch_size": 32}], "fairprune": [{"prune_ratio": 0.02}], "retrain_fair": [{}]},
        epochs=1,
        train_config={"optim": {"epochs": 1}},
        n_boot=20,
        eval_splits=("test",),
    )
    table = comparison_table(comparison)
    assert set(table["method"]) == {
        "erm",
        "swift",
        "swift_nomask",
        "fairprune",
        "retrain_fair",
        "group_thresholds",
    }
    assert set(table["threshold"]) == {"0.5", "tuned"}
    flagged = table.groupby("method")["needs_attribute_at_prediction"].first()
    assert flagged["group_thresholds"] and not flagged["swift"]
    assert comparison.results["swift_nomask"].params == comparison.results["swift"].params
    assert (table["auc_lo"] <= table["auc"]).all() and (table["auc"] <= table["auc_hi"]).all()
    assert table.loc[table["method"] == "swift", "wall_time_s"].iloc[0] > 0
