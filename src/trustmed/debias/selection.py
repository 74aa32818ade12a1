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

Rows whose attribute is unknown follow the rule of ``trustmed audit``: they are evaluated and
reported as their own group, left out of the gaps (and of the validation gap the selection reads)
unless ``include_unknown``; methods fit on the known rows only unless ``include_unknown``. A method
that needs the attribute at prediction time and was not fitted on the unknown group gives those
rows the unchanged model's decision at 0.5 (a note says how many).

A result is *flagged* (:func:`result_flags`) when its setting failed the guard or its predictions
are degenerate (:func:`trustmed.metrics.fairness.degenerate_reason`): constant, or no better than
chance, at the reported threshold. A flagged gap is no evidence of fairness.

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

from trustmed.debias.data import GroupedSet, known_only, predict_proba
from trustmed.debias.registry import check_settings, get_method, method_names
from trustmed.errors import InputError
from trustmed.metrics.fairness import UNKNOWN, choose_threshold, degenerate_reason, fairness_report

__all__ = [
    "ERM",
    "GAPS",
    "REPORTED",
    "Comparison",
    "MethodResult",
    "check_plan",
    "compare_methods",
    "guard_failure",
    "method_scores",
    "result_flags",
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
    guard_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def flags(self) -> dict[str, dict[str, str]]:
        """``{split: {threshold kind: reason}}`` for every flagged evaluation (:func:`result_flags`)."""
        out: dict[str, dict[str, str]] = {}
        for split, by_kind in self.metrics.items():
            for kind, report in by_kind.items():
                reasons = result_flags(self, report)
                if reasons:
                    out.setdefault(split, {})[kind] = "; ".join(reasons)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "needs_attribute_at_prediction": self.needs_attribute,
            "guard_passed": self.guard_passed,
            "guard_reason": self.guard_reason,
            "flags": self.flags(),
            "notes": self.notes,
            "search": self.search,
            "cost": self.cost,
            "search_wall_time_s": self.search_wall_time_s,
            "tuned_threshold": self.threshold,
            "metrics": self.metrics,
        }


def result_flags(result: MethodResult, report: Mapping[str, Any]) -> list[str]:
    """Why one evaluation of ``result`` (a :func:`fairness_report`) must not be read as a clean result:
    its setting failed the validation guard, and/or its predictions are degenerate at that threshold
    (constant or no better than chance). Empty for a healthy result."""
    reasons = [result.guard_reason] if result.guard_reason else []
    degenerate = degenerate_reason(report["overall"])
    if degenerate:
        reasons.append(degenerate)
    return reasons


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


def _point(
    data: GroupedSet, scores: np.ndarray, threshold: float = 0.5, include_unknown: bool = False
) -> dict[str, float]:
    report = fairness_report(
        data.labels,
        scores,
        groups=data.groups,
        threshold=threshold,
        n_boot=0,
        include_unknown=include_unknown,
    )
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


def guard_failure(
    row: Mapping[str, float], reference: Mapping[str, float], guard: float = 0.02
) -> str | None:
    """Why a validation row fails the guard of :func:`select_setting`, or ``None`` when it passes.

    >>> guard_failure({"auc": 0.61, "balanced_accuracy": 0.69}, {"auc": 0.80, "balanced_accuracy": 0.70})
    'failed validation guard (val AUC 0.610 < ERM 0.800 − 0.02)'
    """
    parts = [
        f"val {label} {row[key]:.3f} < ERM {reference[key]:.3f} − {guard:g}"
        for key, label in (("auc", "AUC"), ("balanced_accuracy", "balanced accuracy"))
        if not row[key] >= reference[key] - guard - 1e-12  # NaN fails too
    ]
    return f"failed validation guard ({', '.join(parts)})" if parts else None


def method_scores(
    estimator: Any, data: GroupedSet, *, needs_attribute: bool, fitted_unknown: bool
) -> tuple[np.ndarray, int]:
    """A fitted method's scores on ``data`` and how many rows fell back to the unchanged model.

    A method that needs the attribute at prediction time has no rule for the group ``"unknown"``
    unless it was fitted on it (``fitted_unknown``); those rows get the unchanged model's decision
    at 0.5 (``estimator.model_``), the rest the method's scores.
    """
    unknown = data.groups == UNKNOWN
    if not needs_attribute or fitted_unknown or not unknown.any():
        return estimator.predict_scores(data), 0
    scores = np.empty(len(data), dtype=np.float64)
    known = np.flatnonzero(~unknown)
    if known.size:
        scores[known] = estimator.predict_scores(data.subset(known))
    rest = np.flatnonzero(unknown)
    scores[rest] = (predict_proba(estimator.model_, data.subset(rest)) >= 0.5).astype(np.float64)
    return scores, int(rest.size)


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
    include_unknown: bool = False,
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
    include_unknown : fit on the rows of unknown attribute (as a group of their own) and count them
        in every gap; by default they are left out of fitting and of the gaps, and reported as
        their own group in every evaluation.
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
    fit_sets = {  # what methods fit on: the known rows, unless include_unknown
        name: sets[name] if include_unknown else known_only(sets[name], name)
        for name in ("external", "train")
        if name in sets
    }
    erm_val = predict_proba(model, val)
    reference = _point(val, erm_val, include_unknown=include_unknown)
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
            scorer, val_scores = (lambda data: (predict_proba(model, data), 0)), erm_val
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
            fit_set = fit_sets[method.fit_on]
            result, estimator, val_scores = _search(
                method, template, settings, model, fit_set, val, reference, guard, select_gap, include_unknown
            )
            scorer = partial(
                method_scores,
                estimator,
                needs_attribute=method.needs_attribute,
                fitted_unknown=UNKNOWN in fit_set.groups,
            )
        result.search_wall_time_s = time.perf_counter() - start
        if not result.needs_attribute:
            result.threshold = float(choose_threshold(val.labels, val_scores, method="youden"))
        result.scores["val"] = val_scores
        for split in splits:
            scores, fallback = scorer(sets[split])
            if fallback:
                result.notes.append(
                    f"{split}: {fallback} rows of unknown {attribute} scored by the unchanged model's "
                    "decision at 0.5 (the method has no rule for an unknown group)"
                )
            result.scores[split] = scores
            result.metrics[split] = _report(
                sets[split], scores, result.threshold, n_boot, seed, include_unknown
            )
            for kind, report in result.metrics[split].items():
                for reason in result_flags(result, report):
                    log.warning("%s on %s (threshold %s): %s", name, split, kind, reason)
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
        "include_unknown": include_unknown,
        "sizes": {k: len(v) for k, v in {**sets, **fit_sets}.items()},
    }
    return Comparison(attribute=attribute, results=results, reference=reference, settings=settings_used)


def _settings(
    name: str, grids: Mapping[str, Sequence[Mapping[str, Any]]], quick: bool
) -> list[dict[str, Any]]:
    return [dict(s) for s in grids.get(name) or get_method(name).settings(quick)]


def _search(method, template, settings, model, fit_set, val, reference, guard, gap, include_unknown):
    """Fit every setting, score it on validation and choose one: ``(result, estimator, val scores)``."""
    search, fitted = [], []
    for params in settings:
        estimator = clone(template).set_params(**{**params, **method.fixed})
        method.fit(estimator, model, fit_set, val)
        scores, _ = method_scores(
            estimator, val, needs_attribute=method.needs_attribute, fitted_unknown=UNKNOWN in fit_set.groups
        )
        search.append(
            {
                "params": params,
                **_point(val, scores, include_unknown=include_unknown),
                "cost": dict(estimator.cost_),
            }
        )
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
    if not passed:
        result.guard_reason = guard_failure(search[best], reference, guard) or "failed validation guard"
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


def _report(
    data: GroupedSet,
    scores: np.ndarray,
    threshold: float,
    n_boot: int,
    seed: int,
    include_unknown: bool = False,
) -> dict[str, Any]:
    """Fairness reports at 0.5 and at the tuned ``threshold``, with bootstrap CIs (the unknown group
    reported, and left out of the gaps unless ``include_unknown``)."""
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
            include_unknown=include_unknown,
        )
        for kind, tau in (("0.5", 0.5), ("tuned", threshold))
    }
