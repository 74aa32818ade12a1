"""The comparison's rule for an unknown attribute (the same as ``trustmed audit``'s) and its flags on
degenerate results (a failed validation guard, constant predictions), in every output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from trustmed.audit import run_audit
from trustmed.debias.base import DebiasEstimator
from trustmed.debias.data import GroupedSet
from trustmed.debias.registry import METHODS, Method, register
from trustmed.debias.run import write_comparison
from trustmed.debias.selection import compare_methods, guard_failure
from trustmed.debias.tables import comparison_table, flag_label


class _Features(nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 0].mean(dim=(1, 2)) - 0.5, x[:, 1, 0, 0]], dim=1)


class Knobs(nn.Module):
    """A classifier whose logit is ``a · (mean of channel 0 − ½) + b · (a noise pixel) + c``."""

    def __init__(self, a: float = 4.0, b: float = 0.0, c: float = 0.0):
        super().__init__()
        self.extractor = _Features()
        self.head = nn.Linear(2, 1)
        set_knobs(self, a, b, c)

    def forward(self, x):
        return self.head(self.extractor(x)).squeeze(-1)


def set_knobs(model: Knobs, a: float, b: float, c: float) -> None:
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[a, b]]))
        model.head.bias.fill_(c)


class SetKnobs(DebiasEstimator):
    """A stand-in method: the model with other knobs."""

    def __init__(self, attribute=None, *, a=4.0, b=0.0, c=0.0, seed=0):
        self.attribute, self.a, self.b, self.c, self.seed = attribute, a, b, c, seed

    def fit(self, model, external_set):
        self.model_ = copy.deepcopy(model)
        set_knobs(self.model_, self.a, self.b, self.c)
        self.cost_ = {
            "wall_time_s": 0.0,
            "epochs": 0,
            "samples_seen": len(external_set),
            "parameter_updates": 0,
        }
        return self


TOYS = {
    "toy_healthy": {"a": 3.0},  # as good as ERM
    "toy_noisy": {"a": 1.0, "b": 3.0},  # better than chance, far below ERM: fails the guard
    "toy_constant": {"a": 0.0, "c": -3.0},  # every prediction negative
}


@pytest.fixture
def toys():
    for name, params in TOYS.items():
        register(Method(name, SetKnobs, grid=(params,)))
    yield list(TOYS)
    for name in TOYS:
        METHODS.pop(name)


def _data(n: int, seed: int, unknown: float = 0.0) -> GroupedSet:
    """Channel 0 carries the label (inverted for the rows of unknown tone), channel 1 is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    groups = np.where(rng.random(n) < unknown, "unknown", rng.choice(["light", "dark"], n))
    signal = np.where(groups == "unknown", 1 - labels, labels)
    images = torch.as_tensor(rng.normal(size=(n, 2, 4, 4)), dtype=torch.float32)
    images[:, 0] += torch.as_tensor(signal, dtype=torch.float32).view(-1, 1, 1)
    return GroupedSet(images, labels, groups, attribute="tone", sample_ids=np.arange(n).astype(str))


def _sets(unknown: float = 0.0) -> dict[str, GroupedSet]:
    return {
        "external": _data(120, 0, unknown),
        "val": _data(200, 1, unknown),
        "test": _data(300, 2, unknown),
    }


def test_constant_and_guard_failures_are_flagged_and_a_healthy_method_is_not(toys, tmp_path):
    comparison = compare_methods(Knobs(), _sets(), methods=["erm", *toys], n_boot=0, eval_splits=("test",))
    table = comparison_table(comparison)
    at_half = table[table["threshold"] == "0.5"].set_index("method")
    assert at_half.loc["erm", "flag"] == "" and at_half.loc["erm", "flag_reason"] == ""
    assert at_half.loc["toy_healthy", "flag"] == "" and comparison.results["toy_healthy"].guard_passed
    noisy = at_half.loc["toy_noisy"]
    reference = comparison.reference
    assert noisy["flag"] == "failed guard"
    assert noisy["flag_reason"] == guard_failure(comparison.results["toy_noisy"].search[0], reference)
    assert noisy["flag_reason"].startswith(
        f"failed validation guard (val AUC {comparison.results['toy_noisy'].search[0]['auc']:.3f} < "
        f"ERM {reference['auc']:.3f} − 0.02"
    )
    constant = at_half.loc["toy_constant"]
    assert constant["eodds_mean_gap"] == 0.0  # the clean-looking number the flag is about
    assert constant["flag"] == "failed guard + constant"
    assert "constant predictions (all negative, balanced accuracy 0.500)" in constant["flag_reason"]
    # written: summary.json and comparison.json carry the same flags; the healthy ones are absent
    written = write_comparison(comparison, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["flags"]) == {"toy_noisy", "toy_constant"}
    assert summary["flags"]["toy_constant"]["test"]["0.5"] == constant["flag_reason"]
    full = json.loads((tmp_path / "comparison.json").read_text())["methods"]
    assert full["toy_noisy"]["guard_reason"] == noisy["flag_reason"] and full["erm"]["flags"] == {}
    csv = pd.read_csv(tmp_path / "comparison.csv")
    assert set(csv.loc[csv["flag"].notna(), "method"]) == {"toy_noisy", "toy_constant"}
    assert written.table["flag"].tolist() == table["flag"].tolist()


def test_flagged_points_are_greyed_in_the_pareto_figure(toys, tmp_path, monkeypatch):
    import matplotlib.axes

    comparison = compare_methods(Knobs(), _sets(), methods=["erm", *toys], n_boot=0, eval_splits=("test",))
    drawn = {}
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn[kwargs["label"]] = kwargs
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    write_comparison(comparison, tmp_path)
    assert drawn["toy_constant [flagged: failed guard + constant]"]["color"] == "0.6"
    assert drawn["toy_constant [flagged: failed guard + constant]"]["mfc"] == "white"
    assert drawn["toy_noisy [flagged: failed guard]"]["color"] == "0.6"
    assert drawn["toy_healthy"]["color"] != "0.6" and drawn["toy_healthy"]["mfc"] != "white"


def test_flag_label_is_short():
    assert flag_label("failed validation guard (val AUC 0.610 < ERM 0.800 − 0.02)") == "failed guard"
    assert flag_label([]) == ""


def test_unknown_rows_are_reported_like_trustmed_audit_and_left_out_of_the_gaps(toys):
    sets = _sets(unknown=0.2)
    comparison = compare_methods(
        Knobs(), sets, methods=["erm", "toy_healthy"], n_boot=200, eval_splits=("test",)
    )
    test = sets["test"]
    for name in ("erm", "toy_healthy"):
        result = comparison.results[name]
        report = result.metrics["test"]["0.5"]
        frame = pd.DataFrame({"label": test.labels, "score": result.scores["test"], "tone": test.groups})
        frame.loc[frame.index % 2 == 0, "tone"] = frame["tone"].where(frame["tone"] != "unknown")  # some NaN
        audited = run_audit(frame, group_cols=["tone"], threshold=0.5, n_boot=200, figures=False).metrics
        assert report["gaps"] == audited["gaps"], name
        assert report["groups"] == audited["groups"], name
        assert report["groups"]["unknown"]["excluded_from_gaps"] is True
    # the fitted method never saw the rows of unknown tone
    assert comparison.settings["sizes"]["external"] == int((sets["external"].groups != "unknown").sum())


def test_include_unknown_counts_the_unknown_group_which_is_the_worst(toys):
    sets = _sets(unknown=0.2)
    default = compare_methods(Knobs(), sets, methods=["erm"], n_boot=0, eval_splits=("test",))
    counted = compare_methods(
        Knobs(), sets, methods=["erm"], n_boot=0, eval_splits=("test",), include_unknown=True
    )
    a, b = (c.results["erm"].metrics["test"]["0.5"] for c in (default, counted))
    assert b["groups"]["unknown"]["excluded_from_gaps"] is False
    assert b["gaps"]["worst_group_accuracy"]["value"] == pytest.approx(
        b["groups"]["unknown"]["accuracy"]["value"]
    )
    assert b["gaps"]["eodds_mean_gap"]["value"] > a["gaps"]["eodds_mean_gap"]["value"] + 0.3
    assert counted.settings["sizes"]["external"] == len(sets["external"])


def test_a_method_needing_the_attribute_falls_back_on_unknown_rows():
    sets = _sets(unknown=0.2)
    comparison = compare_methods(Knobs(), sets, methods=["group_thresholds"], n_boot=0, eval_splits=("test",))
    result = comparison.results["group_thresholds"]
    n_unknown = int((sets["test"].groups == "unknown").sum())
    assert result.notes == [
        f"test: {n_unknown} rows of unknown tone scored by the unchanged model's decision at 0.5 "
        "(the method has no rule for an unknown group)"
    ]
    unknown = sets["test"].groups == "unknown"
    erm = 1 / (1 + np.exp(-Knobs()(sets["test"].images).detach().numpy()))
    np.testing.assert_array_equal(result.scores["test"][unknown], (erm[unknown] >= 0.5).astype(float))
    fitted_on_all = compare_methods(
        Knobs(), sets, methods=["group_thresholds"], n_boot=0, eval_splits=("test",), include_unknown=True
    )
    assert fitted_on_all.results["group_thresholds"].notes == []
