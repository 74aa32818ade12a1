"""The debiasing pipeline: from a trained checkpoint and a dataset to a debiased model or a comparison.

The command line (``trustmed debias run | compare | apply-thresholds``), the demo and the benchmark
call these functions, with the configs defined here:

* :func:`run_debias` (:class:`DebiasRunConfig`) debiases a checkpoint with one registered method
  (SWiFT, "Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025, arXiv 2508.18826, or a
  baseline) and writes the debiased checkpoint, its predictions and before/after audits;
* :func:`compare_checkpoint` (:class:`DebiasCompareConfig`) runs ERM and every chosen method on one
  external set with the validation-only protocol of :mod:`trustmed.debias.selection`;
  :func:`write_comparison` writes its table, JSON, Pareto figures and summary, and
  :func:`run_compare` does both into ``--out``;
* :func:`run_apply_thresholds` applies saved per-group thresholds to a predictions CSV.

Both configs read the data the checkpoint was trained on unless ``data`` says otherwise. Rows whose
attribute is missing or ``"unknown"`` follow the rule of ``trustmed audit``: methods fit on the known
rows only, and every evaluation (the before/after audits, the compared splits) reports the unknown
rows as their own group, left out of the gaps; ``include_unknown`` fits on them and counts them
like any other group. Degenerate results (constant or chance-level predictions, a failed
validation guard) are flagged in ``debias.json`` / ``summary.json`` (``"flags"``) and the tables.

>>> DebiasRunConfig(method="swift", params={"beta": 0.2}).external_split
'external'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, model_validator

from trustmed.config import Config, NBoot
from trustmed.debias.data import GroupedSet, known_only, load_grouped_sets, predict_proba, subsample
from trustmed.debias.registry import get_method, method_names
from trustmed.debias.selection import ERM, Comparison, check_plan, compare_methods, method_scores
from trustmed.debias.tables import comparison_table, dominating_methods, pareto_figure
from trustmed.errors import InputError
from trustmed.metrics.fairness import UNKNOWN, degenerate_reason

__all__ = [
    "SUMMARY_KEYS",
    "CompareResult",
    "DataRef",
    "DebiasCompareConfig",
    "DebiasRunConfig",
    "compare_checkpoint",
    "run_apply_thresholds",
    "run_compare",
    "run_debias",
    "write_comparison",
]

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("auc", "balanced_accuracy", "eodds_mean_gap", "eopp_tpr_gap", "dp_gap", "worst_group_auc")
"""The metrics of a run's summary (``debias.json``), per split, before and after."""


class DataRef(Config):
    """Where the data is: a registered dataset (``trustmed.data``) at ``root``, or a manifest CSV."""

    dataset: str | None = None
    root: Path | None = None
    options: dict[str, Any] = {}


class _DebiasConfig(Config):
    """What a single run and a comparison share: the model, the data and the external set."""

    seed: int = 0
    checkpoint: Path | None = None
    data: DataRef = DataRef()
    attribute: str = "skin_tone"
    external_size: int | None = Field(None, ge=1)
    external_fraction: float | None = Field(None, gt=0, le=1)
    bias_loss: Literal["eodds", "eopp", "dp"] = "eodds"
    epochs: int = Field(10, ge=0)
    n_boot: NBoot = 1000
    include_unknown: bool = False

    @model_validator(mode="after")
    def _one_external_size(self) -> _DebiasConfig:
        if self.external_size is not None and self.external_fraction is not None:
            raise ValueError("give external_size or external_fraction, not both")
        return self


class DebiasRunConfig(_DebiasConfig):
    """Config of ``trustmed debias run`` (one method).

    ``params`` sets the method's parameters (see :mod:`trustmed.debias.registry`); ``epochs`` is
    the epochs of one fine-tuning step; ``external_size`` / ``external_fraction`` (of the
    checkpoint's training-set size) draw a stratified subset of the external split
    (``external_split: null`` fits on every row).
    """

    method: str = "swift"
    external_split: str | None = "external"
    params: dict[str, Any] = {}
    eval_splits: list[str] = ["val", "test"]


class DebiasCompareConfig(_DebiasConfig):
    """Config of ``trustmed debias compare`` (ERM + every method on one configuration).

    ``methods`` defaults to ERM and every registered method; ``grids`` replaces a method's
    registered validation grid; ``quick`` uses the registered quick grids.
    """

    external_split: str = "external"
    methods: list[str] | None = None
    grids: dict[str, list[dict[str, Any]]] = {}
    quick: bool = False
    guard: float = Field(0.02, ge=0)
    select_gap: str = "eodds_mean_gap"
    eval_splits: list[str] = ["test", "ood"]


def _load_model(checkpoint: Path | None):
    from trustmed.models import load_checkpoint

    if checkpoint is None:
        raise InputError("--checkpoint is required (a directory with model.safetensors and model.json)")
    return load_checkpoint(checkpoint)


def _resolve_data(data: DataRef, metadata: dict[str, Any]) -> tuple[str, Path, dict[str, Any]]:
    """Dataset name, root and options: explicit, else those the checkpoint was trained on."""
    trained = metadata.get("config", {}).get("data", {})
    root = data.root if data.root is not None else (Path(trained["root"]) if trained.get("root") else None)
    if root is None:
        raise InputError("no data given: pass --external (a dataset root or manifest CSV) or data.root")
    if data.dataset is not None:
        name = data.dataset
    elif root.suffix.lower() == ".csv":
        name = "manifest"
    else:
        name = trained.get("dataset") or "manifest"
    options = (
        dict(data.options)
        if data.options or name != trained.get("dataset")
        else dict(trained.get("options", {}))
    )
    if not root.exists():
        raise InputError(f"data root not found: {root}")
    return name, root, options


def _external_size(cfg: _DebiasConfig, metadata: dict[str, Any]) -> int | None:
    if cfg.external_fraction is None:
        return cfg.external_size
    n_train = metadata.get("training", {}).get("n_train")
    if not n_train:
        raise InputError(
            f"{cfg.checkpoint}: external_fraction needs the training-set size the checkpoint records "
            "(model.json metadata.training.n_train); give external_size instead"
        )
    return max(round(cfg.external_fraction * int(n_train)), 1)


def _read_data(cfg: _DebiasConfig, metadata: dict[str, Any]) -> tuple[pd.DataFrame, Path]:
    """The data, split as the checkpoint's training run split it (its saved ``splits.csv``; an
    external split carved from the training patients when the dataset has none)."""
    from trustmed.train.classifier import dataset_of_checkpoint

    name, root, options = _resolve_data(cfg.data, metadata)
    folder = cfg.checkpoint if cfg.checkpoint is not None and Path(cfg.checkpoint).is_dir() else None
    manifest = dataset_of_checkpoint(
        folder, metadata, dataset=name, root=root, options=options, attribute=cfg.attribute
    )
    return manifest, root


def _read_sets(cfg, spec, metadata: dict[str, Any], *, splits: list[str], required: list[str]):
    """The dataset's manifest, its root and the grouped sets of ``splits`` (``required`` must exist)."""
    manifest, root = _read_data(cfg, metadata)
    sets = load_grouped_sets(
        manifest,
        root,
        attribute=cfg.attribute,
        image_size=spec.image_size,
        channels=spec.in_channels,
        splits=splits,
        required=required,
        what=str(root),
        keep_unknown=True,
    )
    return manifest, root, sets


def _fit_rows(cfg: _DebiasConfig, data: GroupedSet, what: str) -> GroupedSet:
    """The rows a method fits on: the known ones, or all with ``include_unknown``."""
    return data if cfg.include_unknown else known_only(data, what)


def _audit(
    table: pd.DataFrame, attribute: str, n_boot: int, seed: int, include_unknown: bool
) -> dict[str, Any]:
    """The audit of a predictions table at 0.5: what ``trustmed audit`` writes for it."""
    from trustmed.audit import run_audit

    return run_audit(
        table,
        group_cols=[attribute],
        patient_col="patient_id" if "patient_id" in table else None,
        threshold=0.5,
        n_boot=n_boot,
        seed=seed,
        figures=False,
        include_unknown=include_unknown,
        source=f"predictions by {attribute}",
    ).metrics


def _summary_line(report: dict[str, Any]) -> dict[str, float]:
    merged = {**report["overall"], **report["gaps"]}
    return {k: merged[k]["value"] for k in SUMMARY_KEYS if k in merged}


def run_debias(cfg: DebiasRunConfig, out: Path) -> dict[str, Any]:
    """Debias ``cfg.checkpoint`` with ``cfg.method``; write checkpoint, predictions, before/after audits.

    Writes into ``out`` (as a whole): ``model.safetensors`` + ``model.json``, whatever the method
    needs at prediction time (``group_thresholds.json``), ``predictions_<split>.csv`` and
    ``predictions_before_<split>.csv``, ``audit_<before|after>/<split>/metrics.json``,
    ``history.json`` (when the method records one) and ``debias.json`` (the summary, returned).
    """
    from trustmed.io import write_json
    from trustmed.models import save_checkpoint
    from trustmed.outdir import staged_dir
    from trustmed.train.classifier import DEFAULT_ATTRIBUTES, prediction_table

    method = get_method(cfg.method)
    model, spec, metadata = _load_model(cfg.checkpoint)
    train_config = metadata.get("config", {})
    estimator = method.build(
        cfg.params,
        attribute=cfg.attribute,
        seed=cfg.seed,
        bias_loss=cfg.bias_loss,
        epochs=cfg.epochs,
        train_config=train_config,
    )
    fit_split = "train" if method.fit_on == "train" else cfg.external_split
    wanted = [fit_split, "val" if method.fit_on == "train" else None, *cfg.eval_splits]
    manifest, root, sets = _read_sets(
        cfg,
        spec,
        metadata,
        splits=[s for s in wanted if s is not None],
        required=[fit_split] if fit_split is not None else [],
    )
    fit_set = (
        _fit_rows(cfg, sets[fit_split], f"{root} {fit_split}")
        if fit_split is not None
        else GroupedSet.from_manifest(
            manifest,
            root,
            attribute=cfg.attribute,
            image_size=spec.image_size,
            channels=spec.in_channels,
            what=f"{root} (all rows)",
            keep_unknown=cfg.include_unknown,
        )
    )
    size = _external_size(cfg, metadata)
    if size is not None and method.fit_on == "external":
        fit_set = subsample(fit_set, size, seed=cfg.seed)
    method.fit(estimator, model, fit_set, sets.get("val"))
    summary: dict[str, Any] = {
        "method": cfg.method,
        "attribute": cfg.attribute,
        "params": cfg.params,
        "cost": estimator.cost_,
        "n_fit": len(fit_set),
        "fit_split": fit_split,
        "checkpoint": str(cfg.checkpoint),
        "include_unknown": cfg.include_unknown,
        "splits": {},
        "flags": {},
        "notes": [],
        "needs_attribute_at_prediction": method.needs_attribute,
    }
    by_id = manifest.assign(sample_id=manifest["sample_id"].astype(str)).set_index("sample_id")
    attributes = list(dict.fromkeys([*DEFAULT_ATTRIBUTES, cfg.attribute]))
    with staged_dir(out) as tmp:
        summary.update(estimator.write_outputs(tmp))
        save_checkpoint(
            estimator.model_,
            spec,
            tmp,
            source_checkpoint=str(cfg.checkpoint),
            debias=summary,
            config=train_config,
        )
        for split in [s for s in cfg.eval_splits if s in sets]:
            data = sets[split]
            rows = by_id.loc[data.sample_ids].reset_index()
            scores, fallback = method_scores(
                estimator,
                data,
                needs_attribute=method.needs_attribute,
                fitted_unknown=UNKNOWN in fit_set.groups,
            )
            if fallback:
                summary["notes"].append(
                    f"{split}: {fallback} rows of unknown {cfg.attribute} scored by the unchanged model's "
                    "decision at 0.5 (the method has no rule for an unknown group)"
                )
            before = prediction_table(rows, predict_proba(model, data), attributes)
            after = prediction_table(rows, scores, attributes)
            before.to_csv(tmp / f"predictions_before_{split}.csv", index=False)
            after.to_csv(tmp / f"predictions_{split}.csv", index=False)
            reports = {
                when: _audit(table, cfg.attribute, cfg.n_boot, cfg.seed, cfg.include_unknown)
                for when, table in (("before", before), ("after", after))
            }
            for when, report in reports.items():
                write_json(tmp / f"audit_{when}" / split / "metrics.json", report)
                reason = degenerate_reason(report["overall"])
                if reason:
                    summary["flags"].setdefault(split, {})[when] = reason
                    log.warning("%s on %s (%s): %s", cfg.method, split, when, reason)
            summary["splits"][split] = {when: _summary_line(r) for when, r in reports.items()}
        if hasattr(estimator, "history_"):
            write_json(tmp / "history.json", estimator.history_)
        write_json(tmp / "debias.json", summary)
    return summary


def compare_checkpoint(cfg: DebiasCompareConfig) -> Comparison:
    """ERM and every method of ``cfg`` from ``cfg.checkpoint``, on ``cfg``'s external set.

    Reads the checkpoint and the splits (external, val, the evaluated ones, and train when a method
    fits on it), draws the external subset (``external_size`` / ``external_fraction``) and runs
    :func:`~trustmed.debias.selection.compare_methods`. Writes nothing (:func:`write_comparison`).
    """
    methods = list(cfg.methods) if cfg.methods is not None else [ERM, *method_names()]
    check_plan(methods, cfg.grids)
    model, spec, metadata = _load_model(cfg.checkpoint)
    fits_on_train = any(m != ERM and get_method(m).fit_on == "train" for m in methods)
    _, _, sets = _read_sets(
        cfg,
        spec,
        metadata,
        splits=[cfg.external_split, "val", *cfg.eval_splits, *(["train"] if fits_on_train else [])],
        required=[cfg.external_split, "val"],
    )
    sets = {("external" if k == cfg.external_split else k): v for k, v in sets.items()}
    for name in ("external", "train"):
        if name in sets:
            sets[name] = _fit_rows(cfg, sets[name], name)
    size = _external_size(cfg, metadata)
    if size is not None:
        sets["external"] = subsample(sets["external"], size, seed=cfg.seed)
    return compare_methods(
        model,
        sets,
        methods=methods,
        grids=cfg.grids,
        quick=cfg.quick,
        bias_loss=cfg.bias_loss,
        epochs=cfg.epochs,
        train_config=metadata.get("config", {}),
        n_boot=cfg.n_boot,
        guard=cfg.guard,
        select_gap=cfg.select_gap,
        eval_splits=cfg.eval_splits,
        seed=cfg.seed,
        include_unknown=cfg.include_unknown,
    )


@dataclass
class CompareResult:
    """A comparison, its table, and the methods that dominate SWiFT beyond the CIs on ``split``."""

    comparison: Comparison
    table: pd.DataFrame
    split: str | None
    dominated_by: list[str]


def write_comparison(comparison: Comparison, folder: Path) -> CompareResult:
    """Write ``comparison.csv`` (:func:`~trustmed.debias.tables.comparison_table`), ``comparison.json``,
    ``pareto_<split>_<0.5|tuned>.png`` per evaluated split and ``summary.json`` into ``folder``.

    SWiFT's dominance is tested on the first evaluated split. ``summary.json`` holds ``"flags"``:
    ``{method: {split: {threshold: reason}}}`` for every flagged result (empty when none is).
    """
    from trustmed.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = comparison_table(comparison)
    gap = comparison.settings["select_gap"]
    splits = list(comparison.settings["eval_splits"])
    table.to_csv(folder / "comparison.csv", index=False)
    write_json(folder / "comparison.json", comparison.to_dict())
    for split in splits:
        for kind in ("0.5", "tuned"):
            pareto_figure(table, folder / f"pareto_{split}_{kind}.png", split=split, threshold=kind, gap=gap)
    split = splits[0] if splits else None
    dominated = (
        dominating_methods(table, split=split, gap=gap)
        if "swift" in comparison.results and split is not None
        else []
    )
    flags = {name: res.flags() for name, res in comparison.results.items()}
    write_json(
        folder / "summary.json",
        {
            "swift_dominated_by": dominated,
            "reference_val": comparison.reference,
            "flags": {name: f for name, f in flags.items() if f},
        },
    )
    return CompareResult(comparison, table, split, dominated)


def run_compare(cfg: DebiasCompareConfig, out: Path) -> CompareResult:
    """:func:`compare_checkpoint`, then :func:`write_comparison` into ``out`` (as a whole)."""
    from trustmed.outdir import staged_dir

    comparison = compare_checkpoint(cfg)
    with staged_dir(out) as tmp:
        return write_comparison(comparison, tmp)


def run_apply_thresholds(
    thresholds: Path, predictions: Path, out: Path, *, attribute: str | None = None
) -> pd.DataFrame:
    """Add ``p_decision`` and ``decision`` (:func:`~trustmed.debias.thresholds.apply_thresholds`) to a
    predictions CSV with the thresholds saved in ``thresholds``; written atomically to ``out``."""
    from trustmed.audit import read_predictions
    from trustmed.debias.thresholds import GroupThresholds, apply_thresholds
    from trustmed.io import atomic_write_text

    rules = GroupThresholds.load(thresholds)
    table = apply_thresholds(rules, read_predictions(predictions), attribute=attribute, what=str(predictions))
    atomic_write_text(out, table.to_csv(index=False))
    return table
