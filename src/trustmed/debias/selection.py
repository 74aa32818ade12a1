"""The comparison protocol: ERM and the debiasing methods from one model, each tuned on validation only.

The methods (SWiFT, arXiv 2508.18826, and its baselines: fine-tuning, BMFT arXiv 2408.06890,
FairPrune arXiv 2203.02110, fair retraining, per-group thresholds, and SWiFT's ablations; see
:mod:`trustmed.debias.registry`) all start from the same ERM model and use the same external set.
Each method's hyper-parameters are chosen on **validation only** (:func:`select_setting`): among
the settings whose validation AUC and balanced accuracy stay within ``guard`` (0.02) of the ERM
model's, the one with the lowest validation gap (``eodds_mean_gap`` at 0.5 by default) wins —
without the guard the lowest gap is a model that predicts one class. If no setting passes, the one
closest to passing is kept and ``guard_passed`` is false. Ablations reuse the chosen setting of
the method they ablate.

The chosen setting is then evaluated on the test split (and an out-of-distribution split when
given) at threshold 0.5 and at a threshold tuned on validation (Youden's J), with bootstrap CIs
(:func:`trustmed.metrics.fairness.fairness_report`). Cost is recorded for every method: wall time,
epochs, samples seen and trainable-parameter updates.

>>> reference = {"auc": 0.80, "balanced_accuracy": 0.70}
>>> search = [{"auc": 0.80, "balanced_accuracy": 0.50, "eodds_mean_gap": 0.0},
...           {"auc": 0.79, "balanced_accuracy": 0.69, "eodds_mean_gap": 0.2}]
>>> select_setting(search, reference)
(1, True)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from sklearn.base import clone
from torch import nn

from trustmed.debias.data import GroupedSet, predict_proba
from trustmed.debias.registry import check_settings, get_method, method_names
from trustmed.errors import InputError
from trustmed.metrics.fairness import choose_threshold, fairness_report

__all__ = [
    "ERM",
    "GAPS",
    "REPORTED",
    "Comparison",
    "MethodResult",
    "check_plan",
    "compare_methods",
    "select_setting",
]

log = logging.getLogger(__name__)

ERM = "erm"
"""The reference: the model as given."""
REPORTED = ("auc", "accuracy", "balanced_accuracy")
GAPS = (
    "eodds_mean_gap",
    "eodds_max_gap",
    "eopp_tpr_gap",
    "eopp_fpr_gap",
    "dp_gap",
    "auc_gap",
    "worst_group_auc",
    "worst_group_accuracy",
)


@dataclass
class MethodResult:
    """One method's chosen setting, its validation search, cost, scores and metrics."""

    name: str
    params: dict[str, Any]
    needs_attribute: bool
    guard_passed: bool
    search: list[dict[str, Any]]
    cost: dict[str, float]
    search_wall_time_s: float
    threshold: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "needs_attribute_at_prediction": self.needs_attribute,
            "guard_passed": self.guard_passed,
            "search": self.search,
            "cost": self.cost,
            "search_wall_time_s": self.search_wall_time_s,
            "tuned_threshold": self.threshold,
            "metrics": self.metrics,
        }


@dataclass
class Comparison:
    """All methods' results plus the ERM reference numbers used by the guard."""

    attribute: str
    results: dict[str, MethodResult]
    reference: dict[str, float]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "reference": self.reference,
            "settings": self.settings,
            "methods": {k: v.summary() for k, v in self.results.items()},
        }


def _point(data: GroupedSet, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    report = fairness_report(data.labels, scores, groups=data.groups, threshold=threshold, n_boot=0)
    row = {k: report["overall"][k]["value"] for k in REPORTED}
    row.update({k: report["gaps"][k]["value"] for k in GAPS})
    return row


def select_setting(
    search: Sequence[Mapping[str, float]],
    reference: Mapping[str, float],
    guard: float = 0.02,
    gap: str = "eodds_mean_gap",
) -> tuple[int, bool]:
    """Index of the chosen validation row of ``search`` and whether it passed the guard.

    A row passes when its AUC and balanced accuracy are within ``guard`` of ``reference`` (ERM's);
    the passing row with the lowest ``gap`` wins (ties: the first). When none passes, the row that
    comes closest to passing is chosen.
    """

    def violation(row):
        return (
            max(reference["auc"] - row["auc"], reference["balanced_accuracy"] - row["balanced_accuracy"])
            - guard
        )

    passing = [i for i, row in enumerate(search) if violation(row) <= 1e-12]
    if passing:
        return min(passing, key=lambda i: (np.nan_to_num(search[i][gap], nan=np.inf), i)), True
    return min(range(len(search)), key=lambda i: violation(search[i])), False


def check_plan(methods: Sequence[str], grids: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Raise :class:`InputError` for an unknown method, or a grid setting a method does not take."""
    for name in methods:
        if name != ERM:
            get_method(name)
    check_settings(grids)


def _zero_cost() -> dict[str, float]:
    return {"wall_time_s": 0.0, "epochs": 0, "samples_seen": 0, "parameter_updates": 0}


def compare_methods(
    model: nn.Module,
    sets: Mapping[str, GroupedSet],
    *,
    methods: Sequence[str] | None = None,
    grids: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    quick: bool = False,
    bias_loss: str | None = None,
    epochs: int | None = None,
    train_config: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    guard: float = 0.02,
    select_gap: str = "eodds_mean_gap",
    eval_splits: Sequence[str] = ("test", "ood"),
    seed: int = 0,
) -> Comparison:
    """Run every method of ``methods`` from ``model`` and evaluate it.

    Parameters
    ----------
    model : the ERM classifier (not modified).
    sets : :class:`GroupedSet` per split: ``external`` and ``val`` are required; ``train`` is needed
        by methods that fit on it (``retrain_fair``; skipped with a warning without it); the splits
        in ``eval_splits`` that are present are evaluated.
    methods : ``"erm"`` and registered method names (default: all, ERM first).
    grids : settings per method, replacing its registered grid.
    quick : use the registered quick grids.
    bias_loss, epochs : the bias loss and the epochs per fine-tuning step of every method (SWiFT
        and BMFT: ``epochs`` + ``epochs``; fine-tuning: ``2·epochs``); ``None``: each method's default.
    train_config : the ERM ``TrainConfig`` as a dict (``model.json``'s ``config``), for
        ``retrain_fair``'s schedule.
    guard, select_gap : the validation selection rule (see the module docstring).
    """
    methods = [ERM, *method_names()] if methods is None else list(methods)
    grids = dict(grids or {})
    check_plan(methods, grids)
    for required in ("external", "val"):
        if required not in sets:
            raise InputError(f"compare: the {required!r} split is required")
    order = [ERM, *method_names()]
    attribute = sets["external"].attribute
    val = sets["val"]
    erm_val = predict_proba(model, val)
    reference = _point(val, erm_val)
    splits = [s for s in eval_splits if s in sets]
    run = {"attribute": attribute, "seed": seed, "bias_loss": bias_loss, "epochs": epochs}
    results: dict[str, MethodResult] = {}
    # ablations last: they reuse the setting chosen for the method they ablate
    for name in sorted(
        methods, key=lambda m: (m != ERM and get_method(m).ablation_of is not None, order.index(m))
    ):
        start = time.perf_counter()
        if name == ERM:
            search = [{"params": {}, **reference}]
            result = _result(ERM, {}, needs_attribute=False, passed=True, search=search, cost=_zero_cost())
            scorer, val_scores = partial(predict_proba, model), erm_val
        else:
            method = get_method(name)
            if method.fit_on not in sets:
                log.warning("%s skipped: no %r split given", name, method.fit_on)
                continue
            if method.ablation_of is None:
                settings = _settings(name, grids, quick)
            else:
                base = method.ablation_of
                chosen = results[base].params if base in results else _settings(base, grids, quick)[0]
                settings = [dict(chosen)]
            template = method.build(**run, train_config=train_config)
            result, estimator, val_scores = _search(
                method, template, settings, model, sets, reference, guard, select_gap
            )
            scorer = estimator.predict_scores
        result.search_wall_time_s = time.perf_counter() - start
        if not result.needs_attribute:
            result.threshold = float(choose_threshold(val.labels, val_scores, method="youden"))
        result.scores["val"] = val_scores
        for split in splits:
            result.scores[split] = scorer(sets[split])
            result.metrics[split] = _report(sets[split], result.scores[split], result.threshold, n_boot, seed)
        results[name] = result
        log.info("%s: done in %.1fs", name, time.perf_counter() - start)
    settings_used = {
        "methods": methods,
        "bias_loss": bias_loss,
        "epochs": epochs,
        "n_boot": n_boot,
        "guard": guard,
        "select_gap": select_gap,
        "eval_splits": splits,
        "seed": seed,
        "sizes": {k: len(v) for k, v in sets.items()},
    }
    return Comparison(attribute=attribute, results=results, reference=reference, settings=settings_used)


def _settings(
    name: str, grids: Mapping[str, Sequence[Mapping[str, Any]]], quick: bool
) -> list[dict[str, Any]]:
    return [dict(s) for s in grids.get(name) or get_method(name).settings(quick)]


def _search(method, template, settings, model, sets, reference, guard, gap):
    """Fit every setting, score it on validation and choose one: ``(result, estimator, val scores)``."""
    val = sets["val"]
    search, fitted = [], []
    for params in settings:
        estimator = clone(template).set_params(**{**params, **method.fixed})
        method.fit(estimator, model, sets[method.fit_on], val)
        scores = estimator.predict_scores(val)
        search.append({"params": params, **_point(val, scores), "cost": dict(estimator.cost_)})
        fitted.append((estimator, scores))
    best, passed = select_setting(search, reference, guard, gap)
    if not passed:
        log.warning(
            "%s: no setting kept validation AUC and balanced accuracy within %.2f of ERM", method.name, guard
        )
    estimator, scores = fitted[best]
    result = _result(
        method.name,
        settings[best],
        needs_attribute=method.needs_attribute,
        passed=passed,
        search=search,
        cost=dict(estimator.cost_),
    )
    return result, estimator, scores


def _result(
    name: str,
    params: dict[str, Any],
    *,
    needs_attribute: bool,
    passed: bool,
    search: list[dict[str, Any]],
    cost: dict[str, float],
) -> MethodResult:
    """A result before timing and evaluation (threshold 0.5 until one is tuned)."""
    return MethodResult(
        name=name,
        params=params,
        needs_attribute=needs_attribute,
        guard_passed=passed,
        search=search,
        cost=cost,
        search_wall_time_s=0.0,
        threshold=0.5,
    )


def _report(data: GroupedSet, scores: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Fairness reports at 0.5 and at the tuned ``threshold``, with bootstrap CIs."""
    return {
        kind: fairness_report(
            data.labels,
            scores,
            groups=data.groups,
            threshold=tau,
            n_boot=n_boot,
            seed=seed,
            patient_ids=data.patient_ids,
            attribute=data.attribute,
        )
        for kind, tau in (("0.5", 0.5), ("tuned", threshold))
    }
