"""ERM and every post-hoc debiasing method on one configuration, measured side by side.

The methods (SWiFT, arXiv 2508.18826, and its baselines: fine-tuning, BMFT arXiv 2408.06890,
FairPrune arXiv 2203.02110, fair retraining, per-group thresholds, and SWiFT's ablations) all start
from the same ERM model and use the same external set. Each method's hyper-parameters are chosen
on **validation only**: among the settings whose validation AUC and balanced accuracy stay within
``guard`` (0.02) of the ERM model's, the one with the lowest validation gap (``eodds_mean_gap`` at
0.5 by default) wins — without the guard the lowest gap is a model that predicts one class. If
no setting passes, the one closest to passing is kept and ``guard_passed`` is false.

The chosen setting is then evaluated on the test split (and an out-of-distribution split when
given) at threshold 0.5 and at a threshold tuned on validation (Youden's J), with bootstrap CIs
(:func:`trustmed.metrics.fairness.fairness_report`). Cost is recorded for every method: wall time,
epochs, samples seen and trainable-parameter updates.

>>> sorted(NEEDS_ATTRIBUTE)
['group_thresholds']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from trustmed.debias.baselines import GroupThresholds, RetrainFair
from trustmed.debias.bmft import BMFT
from trustmed.debias.fairprune import FairPrune
from trustmed.debias.finetune import FineTune, GroupedSet, predict_proba
from trustmed.debias.swift import SWiFT
from trustmed.errors import InputError
from trustmed.metrics.fairness import choose_threshold, fairness_report

__all__ = [
    "METHODS",
    "NEEDS_ATTRIBUTE",
    "ABLATIONS",
    "default_grids",
    "make_method",
    "MethodResult",
    "Comparison",
    "compare_methods",
    "comparison_table",
    "dominating_methods",
    "pareto_figure",
    "load_grouped_sets",
    "subsample",
]

log = logging.getLogger(__name__)

METHODS = (
    "erm",
    "swift",
    "swift_nomask",
    "swift_step1_only",
    "finetune",
    "finetune_fair",
    "bmft",
    "fairprune",
    "retrain_fair",
    "group_thresholds",
)
NEEDS_ATTRIBUTE = frozenset({"group_thresholds"})
ABLATIONS = {"swift_nomask": {"use_mask": False}, "swift_step1_only": {"head_step": False}}
REPORTED = (
    "auc",
    "accuracy",
    "balanced_accuracy",
)
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


def default_grids(quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Hyper-parameter settings tried per method (chosen on validation by :func:`compare_methods`).

    External sets are small (tens to hundreds of images), so most settings use batches of 16 to
    get more than one optimiser step per epoch; SWiFT's published defaults (learning rates 1e-4 /
    1e-3, batch 64) are one of its settings.
    """
    if quick:
        return {
            "swift": [{"lr_forget": 1e-3, "lr_base": b, "batch_size": 16} for b in (1e-2, 1e-1)],
            "finetune": [{"lr": lr, "batch_size": 16} for lr in (1e-3, 1e-2)],
            "finetune_fair": [{"lr": lr, "lam": 1.0, "batch_size": 16} for lr in (1e-3, 1e-2)],
            "bmft": [{"lr_forget": 1e-3, "lr_base": 1e-1, "batch_size": 16}],
            "fairprune": [{"prune_ratio": k, "beta": 0.5} for k in (0.01, 0.05)],
            "retrain_fair": [{"lam": 1.0}],
            "group_thresholds": [{"constraints": "equalized_odds"}],
        }
    swift = [{"lr_forget": 1e-4, "lr_base": 1e-3, "batch_size": 64}]
    swift += [
        {"lr_forget": a, "lr_base": b, "batch_size": 16} for a in (1e-4, 1e-3, 1e-2) for b in (1e-2, 1e-1)
    ]
    return {
        "swift": swift,
        "finetune": [{"lr": lr, "batch_size": 16} for lr in (1e-4, 1e-3, 1e-2)],
        "finetune_fair": [
            {"lr": lr, "lam": lam, "batch_size": 16} for lr in (1e-3, 1e-2) for lam in (1.0, 3.0)
        ],
        "bmft": [{"lr_forget": a, "lr_base": 1e-1, "batch_size": 16} for a in (1e-3, 1e-2)],
        "fairprune": [{"prune_ratio": k, "beta": b} for k in (0.01, 0.03, 0.1) for b in (0.5, 1.0)],
        "retrain_fair": [{"lam": 1.0}],
        "group_thresholds": [{"constraints": "equalized_odds"}],
    }


def make_method(
    name: str,
    params: Mapping[str, Any],
    *,
    attribute: str,
    bias_loss: str = "eodds",
    seed: int = 0,
    epochs: int = 10,
    retrain_schedule: Mapping[str, Any] | None = None,
):
    """An unfitted estimator for method ``name`` with ``params`` (``epochs`` per fine-tuning step)."""
    common = {"attribute": attribute, "seed": seed}
    params = dict(params)
    if name in ("swift", *ABLATIONS):
        kwargs = {
            "bias_loss": bias_loss,
            "unlearn_epochs": epochs,
            "n_epochs": epochs,
            **ABLATIONS.get(name, {}),
        }
        return SWiFT(**common, **{**kwargs, **params})
    if name in ("finetune", "finetune_fair"):
        kwargs = {"bias_loss": bias_loss, "epochs": 2 * epochs, "fair": name == "finetune_fair"}
        return FineTune(**common, **{**kwargs, **params})
    if name == "bmft":
        return BMFT(
            **common, **{"bias_loss": bias_loss, "unlearn_epochs": epochs, "n_epochs": epochs, **params}
        )
    if name == "fairprune":
        return FairPrune(**common, **params)
    if name == "retrain_fair":
        return RetrainFair.from_train_config(
            dict(retrain_schedule or {}), attribute=attribute, bias_loss=bias_loss, **params
        )
    if name == "group_thresholds":
        return GroupThresholds(**common, **params)
    raise InputError(f"unknown debiasing method {name!r}; choose one of {', '.join(METHODS)}")


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
    model: Any = None

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


def _scores(estimator, data: GroupedSet) -> np.ndarray:
    if isinstance(estimator, GroupThresholds):
        return estimator.predict_scores(data)
    return predict_proba(estimator.model_, data)


def _point(data: GroupedSet, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    report = fairness_report(data.labels, scores, groups=data.groups, threshold=threshold, n_boot=0)
    row = {k: report["overall"][k]["value"] for k in REPORTED}
    row.update({k: report["gaps"][k]["value"] for k in GAPS})
    return row


def _select(search: list[dict[str, Any]], reference: Mapping[str, float], guard: float, gap: str):
    def violation(row):
        return (
            max(reference["auc"] - row["auc"], reference["balanced_accuracy"] - row["balanced_accuracy"])
            - guard
        )

    passing = [i for i, row in enumerate(search) if violation(row) <= 1e-12]
    if passing:
        return min(passing, key=lambda i: (np.nan_to_num(search[i][gap], nan=np.inf), i)), True
    return min(range(len(search)), key=lambda i: violation(search[i])), False


def compare_methods(
    model: nn.Module,
    sets: Mapping[str, GroupedSet],
    *,
    methods: Sequence[str] = METHODS,
    grids: Mapping[str, list[dict[str, Any]]] | None = None,
    bias_loss: str = "eodds",
    epochs: int = 10,
    retrain_schedule: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    guard: float = 0.02,
    select_gap: str = "eodds_mean_gap",
    eval_splits: Sequence[str] = ("test", "ood"),
    seed: int = 0,
    keep_models: bool = False,
) -> Comparison:
    """Run every method of ``methods`` from ``model`` and evaluate it.

    Parameters
    ----------
    model : the ERM classifier (not modified).
    sets : :class:`GroupedSet` per split: ``external`` and ``val`` are required; ``train`` is needed
        by ``retrain_fair``; the splits in ``eval_splits`` that are present are evaluated.
    methods : method names (see :data:`METHODS`); ablations reuse SWiFT's chosen setting.
    grids : settings per method (default :func:`default_grids`).
    epochs : epochs per fine-tuning step (SWiFT and BMFT: ``epochs`` + ``epochs``; fine-tuning:
        ``2·epochs``).
    retrain_schedule : the ERM ``TrainConfig`` as a dict, for ``retrain_fair``.
    guard, select_gap : the validation selection rule (see the module docstring).
    keep_models : keep each chosen fitted model in the result (for writing checkpoints).
    """
    for required in ("external", "val"):
        if required not in sets:
            raise InputError(f"compare: the {required!r} split is required")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown debiasing methods {unknown}; choose from {', '.join(METHODS)}")
    grids = {**default_grids(), **(grids or {})}
    attribute = sets["external"].attribute
    external, val = sets["external"], sets["val"]
    erm_val = predict_proba(model, val)
    reference = _point(val, erm_val)
    results: dict[str, MethodResult] = {}
    splits = [s for s in eval_splits if s in sets]
    ordered = sorted(methods, key=lambda m: (m in ABLATIONS, METHODS.index(m)))
    for name in ordered:
        if name == "retrain_fair" and "train" not in sets:
            log.warning("retrain_fair skipped: no 'train' split given")
            continue
        start = time.perf_counter()
        if name == "erm":
            chosen = {"params": {}, "estimator": None, "val_scores": erm_val, "cost": _zero_cost()}
            search, passed = [{"params": {}, **reference}], True
        else:
            if name in ABLATIONS:
                base = results["swift"].params if "swift" in results else grids["swift"][0]
                settings = [dict(base)]
            else:
                settings = grids.get(name) or [{}]
            search, fitted = [], []
            for params in settings:
                estimator = make_method(
                    name,
                    params,
                    attribute=attribute,
                    bias_loss=bias_loss,
                    seed=seed,
                    epochs=epochs,
                    retrain_schedule=retrain_schedule,
                )
                estimator.fit(
                    model,
                    sets["train"] if name == "retrain_fair" else external,
                    val if name == "retrain_fair" else None,
                )
                scores = _scores(estimator, val)
                search.append({"params": dict(params), **_point(val, scores), "cost": dict(estimator.cost_)})
                fitted.append((estimator, scores))
            best, passed = _select(search, reference, guard, select_gap)
            if not passed:
                log.warning(
                    "%s: no setting kept validation AUC and balanced accuracy within %.2f of ERM", name, guard
                )
            estimator, scores = fitted[best]
            chosen = {
                "params": settings[best],
                "estimator": estimator,
                "val_scores": scores,
                "cost": dict(estimator.cost_),
            }
        results[name] = _evaluate(
            name,
            chosen,
            search,
            passed,
            sets,
            splits,
            n_boot,
            seed,
            time.perf_counter() - start,
            keep_models,
            model,
        )
        log.info("%s: done in %.1fs", name, time.perf_counter() - start)
    settings_used = {
        "methods": list(methods),
        "bias_loss": bias_loss,
        "epochs": epochs,
        "n_boot": n_boot,
        "guard": guard,
        "select_gap": select_gap,
        "seed": seed,
        "sizes": {k: len(v) for k, v in sets.items()},
    }
    return Comparison(attribute=attribute, results=results, reference=reference, settings=settings_used)


def _zero_cost() -> dict[str, float]:
    return {"wall_time_s": 0.0, "epochs": 0, "samples_seen": 0, "parameter_updates": 0}


def _evaluate(name, chosen, search, passed, sets, splits, n_boot, seed, search_time, keep_models, erm_model):
    estimator = chosen["estimator"]
    val = sets["val"]
    decisions_only = name in NEEDS_ATTRIBUTE
    threshold = 0.5 if decisions_only else choose_threshold(val.labels, chosen["val_scores"], method="youden")
    result = MethodResult(
        name=name,
        params=dict(chosen["params"]),
        needs_attribute=decisions_only,
        guard_passed=passed,
        search=search,
        cost=chosen["cost"],
        search_wall_time_s=search_time,
        threshold=float(threshold),
    )
    result.scores["val"] = chosen["val_scores"]
    for split in splits:
        data = sets[split]
        scores = predict_proba(erm_model, data) if estimator is None else _scores(estimator, data)
        result.scores[split] = scores
        result.metrics[split] = {
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
    if keep_models:
        result.model = erm_model if estimator is None else estimator.model_
    return result


def comparison_table(comparison: Comparison) -> pd.DataFrame:
    """One row per (method, split, threshold): metrics with CIs, cost, and the attribute flag."""
    rows = []
    for name, res in comparison.results.items():
        for split, by_kind in res.metrics.items():
            for kind, report in by_kind.items():
                row: dict[str, Any] = {
                    "method": name,
                    "split": split,
                    "threshold": kind,
                    "needs_attribute_at_prediction": res.needs_attribute,
                    "guard_passed": res.guard_passed,
                }
                for key in REPORTED:
                    _put(row, key, report["overall"][key])
                for key in GAPS:
                    _put(row, key, report["gaps"][key])
                row.update(
                    {k: res.cost[k] for k in ("wall_time_s", "epochs", "samples_seen", "parameter_updates")}
                )
                row["params"] = ", ".join(f"{k}={v}" for k, v in res.params.items())
                rows.append(row)
    return pd.DataFrame(rows)


def _put(row: dict[str, Any], key: str, entry: Mapping[str, Any]) -> None:
    row[key] = entry["value"]
    lo, hi = entry.get("ci", [np.nan, np.nan])
    row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi


def dominating_methods(
    table: pd.DataFrame,
    target: str = "swift",
    *,
    split: str = "test",
    threshold: str = "0.5",
    gap: str = "eodds_mean_gap",
    exclude: Sequence[str] = (*NEEDS_ATTRIBUTE, *ABLATIONS),
) -> list[str]:
    """Methods whose AUC is higher **and** gap lower than ``target``'s, both beyond the CIs (no overlap)."""
    rows = table[(table["split"] == split) & (table["threshold"] == threshold)].set_index("method")
    if target not in rows.index:
        raise InputError(f"dominating_methods: {target!r} is not in the table")
    t = rows.loc[target]
    out = []
    for name, r in rows.iterrows():
        if name == target or name in exclude:
            continue
        if r["auc_lo"] > t["auc_hi"] and r[f"{gap}_hi"] < t[f"{gap}_lo"]:
            out.append(str(name))
    return out


def pareto_figure(
    table: pd.DataFrame,
    path: str | Path,
    *,
    split: str = "test",
    threshold: str = "0.5",
    gap: str = "eodds_mean_gap",
    title: str | None = None,
) -> Path:
    """Gap (x) against AUC (y) per method, with 95 % CI bars; attribute-at-prediction methods hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[(table["split"] == split) & (table["threshold"] == threshold)]
    fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, (_, r) in enumerate(rows.iterrows()):
        xerr = [[max(r[gap] - r[f"{gap}_lo"], 0)], [max(r[f"{gap}_hi"] - r[gap], 0)]]
        yerr = [[max(r["auc"] - r["auc_lo"], 0)], [max(r["auc_hi"] - r["auc"], 0)]]
        hollow = bool(r["needs_attribute_at_prediction"])
        color = cmap(i % 10)
        label = r["method"] + (" (needs attribute)" if hollow else "")
        ax.errorbar(
            r[gap],
            r["auc"],
            xerr=np.nan_to_num(xerr),
            yerr=np.nan_to_num(yerr),
            fmt="o",
            color=color,
            mfc="white" if hollow else color,
            ms=7 if r["method"] == "swift" else 5,
            capsize=2,
            lw=1,
            label=label,
        )
    ax.set_xlabel(f"{gap} ({split}, threshold {threshold}; lower is fairer)")
    ax.set_ylabel(f"AUC ({split})")
    ax.set_title(title or "Fairness gap vs AUC (95% bootstrap CIs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def load_grouped_sets(
    dataset: str,
    root: str | Path,
    *,
    attribute: str,
    image_size: int,
    splits: Sequence[str],
    channels: int = 3,
    options: Mapping[str, Any] | None = None,
    manifest: pd.DataFrame | None = None,
) -> dict[str, GroupedSet]:
    """:class:`GroupedSet` per split of a registered dataset (``trustmed.data.load_dataset``).

    Splits absent from the dataset are skipped (with a log line); the attribute must exist.
    Every set uses the same group order (all groups of the attribute over the requested splits).
    """
    from trustmed.data import load_dataset

    if manifest is None:
        manifest = load_dataset(dataset, root, **dict(options or {}))
    if attribute not in manifest.columns:
        raise InputError(
            f"dataset {dataset!r} at {root}: attribute {attribute!r} not found; "
            f"available: {', '.join(map(str, manifest.columns))}"
        )
    present = set(manifest["split"].astype(str))
    sets = {}
    for split in splits:
        if split not in present:
            log.info("split %r not in dataset %r; skipped", split, dataset)
            continue
        rows = manifest[manifest["split"].astype(str) == split]
        sets[split] = GroupedSet.from_manifest(
            rows,
            root,
            attribute=attribute,
            image_size=image_size,
            channels=channels,
            what=f"{dataset} {split}",
        )
    names = sorted({g for s in sets.values() for g in s.group_names})
    return {k: v.with_groups(v.groups, tuple(names)) for k, v in sets.items()}


def subsample(data: GroupedSet, n: int, *, seed: int = 0) -> GroupedSet:
    """``n`` samples of ``data`` stratified by group × label (proportional, at least one per cell)."""
    if n >= len(data):
        return data
    if n < 1:
        raise InputError(f"external set size must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, int], np.ndarray] = {}
    for i, key in enumerate(zip(data.groups.tolist(), data.labels.tolist(), strict=True)):
        cells.setdefault(key, []).append(i)
    keys = sorted(cells)
    sizes = np.array([len(cells[k]) for k in keys], dtype=float)
    exact = n * sizes / sizes.sum()
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: n - take.sum()]:
        take[i] += 1
    take = np.minimum(np.maximum(take, 1), sizes.astype(int))
    chosen = [
        rng.choice(np.asarray(cells[k]), size=t, replace=False) for k, t in zip(keys, take, strict=True)
    ]
    return data.subset(np.sort(np.concatenate(chosen)))
