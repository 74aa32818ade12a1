"""``trustmed debias``: post-hoc debiasing of a trained classifier (SWiFT, arXiv 2508.18826, and baselines).

``trustmed debias --method swift --checkpoint runs/erm --external runs/synthskin --attribute skin_tone``
writes the debiased checkpoint, its predictions and a before/after audit;
``trustmed debias compare --config examples/debias_synthskin.yaml`` runs ERM and every method on
one configuration and writes the comparison table and the Pareto figure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import typer
from pydantic import Field

from trustmed.commands.common import (
    ConfigOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    WaitOpt,
    claim,
    cli_command,
    console,
    load,
)
from trustmed.config import Config, NBoot
from trustmed.errors import InputError

__all__ = ["DataRef", "DebiasRunConfig", "DebiasCompareConfig", "register", "run_debias", "run_compare"]

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("auc", "balanced_accuracy", "eodds_mean_gap", "eopp_tpr_gap", "dp_gap", "worst_group_auc")


class DataRef(Config):
    """Where the data is: a registered dataset (``trustmed.data``) at ``root``, or a manifest CSV."""

    dataset: str | None = None
    root: Path | None = None
    options: dict[str, Any] = {}


class DebiasRunConfig(Config):
    """Config of ``trustmed debias`` (one method)."""

    seed: int = 0
    method: str = "swift"
    checkpoint: Path | None = None
    data: DataRef = DataRef()
    attribute: str = "skin_tone"
    external_split: str | None = "external"
    external_size: int | None = Field(None, ge=1)
    bias_loss: Literal["eodds", "eopp", "dp"] = "eodds"
    epochs: int = Field(10, ge=0)
    params: dict[str, Any] = {}
    eval_splits: list[str] = ["val", "test"]
    n_boot: NBoot = 1000


class DebiasCompareConfig(Config):
    """Config of ``trustmed debias compare`` (ERM + every method on one configuration)."""

    seed: int = 0
    checkpoint: Path | None = None
    data: DataRef = DataRef()
    attribute: str = "skin_tone"
    external_split: str = "external"
    external_size: int | None = Field(None, ge=1)
    methods: list[str] | None = None
    grids: dict[str, list[dict[str, Any]]] = {}
    quick: bool = False
    bias_loss: Literal["eodds", "eopp", "dp"] = "eodds"
    epochs: int = Field(10, ge=0)
    n_boot: NBoot = 1000
    guard: float = Field(0.02, ge=0)
    select_gap: str = "eodds_mean_gap"
    eval_splits: list[str] = ["test", "ood"]


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


def _load_model(checkpoint: Path | None):
    from trustmed.models import load_checkpoint

    if checkpoint is None:
        raise InputError("--checkpoint is required (a directory with model.safetensors and model.json)")
    return load_checkpoint(checkpoint)


def _predictions(model, manifest: pd.DataFrame, root: Path, spec, attribute: str) -> pd.DataFrame:
    from trustmed.train.classifier import predict_scores, prediction_table

    scores = predict_scores(model, manifest, root, image_size=spec.image_size, channels=spec.in_channels)
    attrs = [a for a in ("skin_tone", "fitzpatrick", "sex", "age_bin", attribute) if a in manifest.columns]
    return prediction_table(manifest, scores, list(dict.fromkeys(attrs)))


def _audit(
    table: pd.DataFrame, attribute: str, n_boot: int, seed: int, threshold: float = 0.5
) -> dict[str, Any]:
    from trustmed.metrics.fairness import fairness_report

    known = table[attribute].notna() & (table[attribute].astype(str) != "unknown")
    rows = table[known]
    return fairness_report(
        rows["label"].to_numpy(),
        rows["score"].to_numpy(),
        groups=rows[attribute].astype(str).to_numpy(),
        threshold=threshold,
        n_boot=n_boot,
        seed=seed,
        patient_ids=rows["patient_id"].to_numpy() if "patient_id" in rows else None,
        attribute=attribute,
    )


def _summary_line(report: dict[str, Any]) -> dict[str, float]:
    merged = {**report["overall"], **report["gaps"]}
    return {k: merged[k]["value"] for k in SUMMARY_KEYS if k in merged}


def run_debias(cfg: DebiasRunConfig, out: Path) -> dict[str, Any]:
    """Debias ``cfg.checkpoint`` with ``cfg.method``; write checkpoint, predictions, before/after audits."""
    from trustmed.data import load_dataset
    from trustmed.debias.baselines import GroupThresholds
    from trustmed.debias.compare import METHODS, make_method, subsample
    from trustmed.debias.finetune import GroupedSet
    from trustmed.io import write_json
    from trustmed.models import save_checkpoint
    from trustmed.outdir import staged_dir
    from trustmed.utils import seed_everything

    if cfg.method not in METHODS or cfg.method == "erm":
        raise InputError(
            f"--method {cfg.method!r}: choose one of {', '.join(m for m in METHODS if m != 'erm')}"
        )
    model, spec, metadata = _load_model(cfg.checkpoint)
    name, root, options = _resolve_data(cfg.data, metadata)
    manifest = load_dataset(name, root, **options)
    if cfg.attribute not in manifest.columns:
        raise InputError(
            f"{root}: attribute {cfg.attribute!r} not found; "
            f"available: {', '.join(map(str, manifest.columns))}"
        )
    fit_split = "train" if cfg.method == "retrain_fair" else cfg.external_split
    if fit_split is not None and "split" in manifest.columns:
        if fit_split not in set(manifest["split"].astype(str)):
            raise InputError(
                f"{root}: split {fit_split!r} not found; "
                f"splits: {', '.join(sorted(manifest['split'].astype(str).unique()))}"
            )
        fit_rows = manifest[manifest["split"].astype(str) == fit_split]
    else:
        fit_rows = manifest
    seed_everything(cfg.seed)
    fit_set = GroupedSet.from_manifest(
        fit_rows,
        root,
        attribute=cfg.attribute,
        image_size=spec.image_size,
        channels=spec.in_channels,
        what=f"{root} ({fit_split or 'all rows'})",
    )
    if cfg.external_size is not None and cfg.method != "retrain_fair":
        fit_set = subsample(fit_set, cfg.external_size, seed=cfg.seed)
    val_set = None
    if cfg.method == "retrain_fair" and "val" in set(manifest["split"].astype(str)):
        val_rows = manifest[manifest["split"].astype(str) == "val"]
        val_set = GroupedSet.from_manifest(
            val_rows, root, attribute=cfg.attribute, image_size=spec.image_size, channels=spec.in_channels
        )
    estimator = make_method(
        cfg.method,
        cfg.params,
        attribute=cfg.attribute,
        bias_loss=cfg.bias_loss,
        seed=cfg.seed,
        epochs=cfg.epochs,
        retrain_schedule=metadata.get("config", {}),
    )
    estimator.fit(model, fit_set, val_set)
    debiased = estimator.model_
    splits = [
        s for s in cfg.eval_splits if "split" in manifest.columns and s in set(manifest["split"].astype(str))
    ]
    summary: dict[str, Any] = {
        "method": cfg.method,
        "attribute": cfg.attribute,
        "params": cfg.params,
        "cost": estimator.cost_,
        "n_fit": len(fit_set),
        "fit_split": fit_split,
        "checkpoint": str(cfg.checkpoint),
        "splits": {},
        "needs_attribute_at_prediction": isinstance(estimator, GroupThresholds),
    }
    if isinstance(estimator, GroupThresholds):
        # the model is unchanged: the thresholds are the method's output, applied on top of its scores
        summary["thresholds_file"] = "group_thresholds.json"
    with staged_dir(out) as tmp:
        if isinstance(estimator, GroupThresholds):
            estimator.save(tmp / "group_thresholds.json")
        save_checkpoint(
            debiased,
            spec,
            tmp,
            source_checkpoint=str(cfg.checkpoint),
            debias=summary,
            config=metadata.get("config", {}),
        )
        for split in splits:
            rows = manifest[manifest["split"].astype(str) == split].reset_index(drop=True)
            before = _predictions(model, rows, root, spec, cfg.attribute)
            after = _predictions(debiased, rows, root, spec, cfg.attribute)
            if isinstance(estimator, GroupThresholds):
                known = after[cfg.attribute].astype(str) != "unknown"
                decided = estimator.decide(
                    after.loc[known, "score"].to_numpy(), after.loc[known, cfg.attribute]
                )
                after = after[known].assign(score=decided)
            before.to_csv(tmp / f"predictions_before_{split}.csv", index=False)
            after.to_csv(tmp / f"predictions_{split}.csv", index=False)
            reports = {
                "before": _audit(before, cfg.attribute, cfg.n_boot, cfg.seed),
                "after": _audit(after, cfg.attribute, cfg.n_boot, cfg.seed),
            }
            for when, report in reports.items():
                write_json(tmp / f"audit_{when}" / split / "metrics.json", report)
            summary["splits"][split] = {when: _summary_line(r) for when, r in reports.items()}
        if hasattr(estimator, "history_"):
            write_json(tmp / "history.json", estimator.history_)
        write_json(tmp / "debias.json", summary)
    return summary


def run_compare(cfg: DebiasCompareConfig, out: Path) -> dict[str, Any]:
    """ERM + every method on one configuration; write the table, the JSON results and the Pareto figures."""
    from trustmed.debias.compare import (
        METHODS,
        compare_methods,
        comparison_table,
        default_grids,
        dominating_methods,
        load_grouped_sets,
        pareto_figure,
        subsample,
    )
    from trustmed.io import write_json
    from trustmed.outdir import staged_dir

    model, spec, metadata = _load_model(cfg.checkpoint)
    name, root, options = _resolve_data(cfg.data, metadata)
    methods = cfg.methods or list(METHODS)
    splits = ["external", "val", *cfg.eval_splits] + (["train"] if "retrain_fair" in methods else [])
    sets = load_grouped_sets(
        name,
        root,
        attribute=cfg.attribute,
        image_size=spec.image_size,
        channels=spec.in_channels,
        splits=list(dict.fromkeys(splits)),
        options=options,
    )
    sets = {("external" if k == cfg.external_split else k): v for k, v in sets.items()}
    for required in ("external", "val"):
        if required not in sets:
            raise InputError(f"{root}: split {required!r} not found (external_split={cfg.external_split!r})")
    if cfg.external_size is not None:
        sets["external"] = subsample(sets["external"], cfg.external_size, seed=cfg.seed)
    grids = {**default_grids(cfg.quick), **cfg.grids}
    comparison = compare_methods(
        model,
        sets,
        methods=methods,
        grids=grids,
        bias_loss=cfg.bias_loss,
        epochs=cfg.epochs,
        retrain_schedule=metadata.get("config", {}),
        n_boot=cfg.n_boot,
        guard=cfg.guard,
        select_gap=cfg.select_gap,
        eval_splits=cfg.eval_splits,
        seed=cfg.seed,
    )
    table = comparison_table(comparison)
    with staged_dir(out) as tmp:
        table.to_csv(tmp / "comparison.csv", index=False)
        write_json(tmp / "comparison.json", comparison.to_dict())
        for split in [s for s in cfg.eval_splits if s in sets]:
            for kind in ("0.5", "tuned"):
                pareto_figure(
                    table, tmp / f"pareto_{split}_{kind}.png", split=split, threshold=kind, gap=cfg.select_gap
                )
        dominated = (
            dominating_methods(table, split=cfg.eval_splits[0], gap=cfg.select_gap)
            if ("swift" in comparison.results and cfg.eval_splits[0] in sets)
            else []
        )
        write_json(
            tmp / "summary.json", {"swift_dominated_by": dominated, "reference_val": comparison.reference}
        )
    return {"table": table, "dominated_by": dominated}


def _print_run(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['method']} on {summary['attribute']} (threshold 0.5)")
    table.add_column("split")
    table.add_column("when")
    for key in SUMMARY_KEYS:
        table.add_column(key, justify="right")
    for split, by_when in summary["splits"].items():
        for when, values in by_when.items():
            table.add_row(split, when, *(f"{values.get(k, float('nan')):.3f}" for k in SUMMARY_KEYS))
    console().print(table)


def _print_compare(table: pd.DataFrame, split: str) -> None:
    from rich.table import Table

    rows = table[(table["split"] == split) & (table["threshold"] == "0.5")]
    out = Table(title=f"debiasing methods on {split} (threshold 0.5; 95% CIs)")
    for col in ("method", "AUC", "eodds_mean_gap", "worst_group_auc", "wall s"):
        out.add_column(col, justify="left" if col == "method" else "right")
    for _, r in rows.iterrows():
        flag = " *" if r["needs_attribute_at_prediction"] else ""
        out.add_row(
            f"{r['method']}{flag}",
            f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]",
            f"{r['eodds_mean_gap']:.3f} [{r['eodds_mean_gap_lo']:.3f}, {r['eodds_mean_gap_hi']:.3f}]",
            f"{r['worst_group_auc']:.3f}",
            f"{r['wall_time_s']:.1f}",
        )
    console().print(out)
    if rows["needs_attribute_at_prediction"].any():
        console().print("* needs the sensitive attribute at prediction time")


MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        "-m",
        help="swift, finetune, finetune_fair, bmft, "
        "fairprune, retrain_fair, group_thresholds, swift_nomask, swift_step1_only.",
    ),
]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Trained model directory (model.json).")
]
ExternalOpt = Annotated[
    Path | None, typer.Option("--external", help="Dataset root (or manifest CSV) holding the external split.")
]
AttributeOpt = Annotated[str | None, typer.Option("--attribute", "-a", help="Sensitive attribute column.")]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", help="Dataset loader name (default: the checkpoint's, or 'manifest' for a CSV)."
    ),
]

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=True,
    help=(
        "Post-hoc debiasing. `trustmed debias --method swift --checkpoint DIR --external DATA --attribute A` "
        "debiases one model (checkpoint, predictions, before/after audit); "
        "`trustmed debias compare --config FILE` runs ERM and every method side by side."
    ),
)


def _overrides(set_: list[str] | None, **flags: Any) -> list[str]:
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return [*(set_ or []), *extra]


@app.callback()
@cli_command
def debias_cmd(
    ctx: typer.Context,
    method: MethodOpt = None,
    checkpoint: CheckpointOpt = None,
    external: ExternalOpt = None,
    attribute: AttributeOpt = None,
    dataset: DatasetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/debias"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Debias one trained classifier with one method."""
    if ctx.invoked_subcommand is not None:
        return
    claim(out, wait)
    overrides = _overrides(
        set_,
        method=method,
        checkpoint=checkpoint,
        attribute=attribute,
        **{"data.root": external, "data.dataset": dataset},
    )
    cfg = load(DebiasRunConfig, config, overrides, seed)
    summary = run_debias(cfg, out)
    if not quiet:
        _print_run(summary)
        console().print(f"wrote {out}")


@app.command("compare")
@cli_command
def compare_cmd(
    checkpoint: CheckpointOpt = None,
    external: ExternalOpt = None,
    attribute: AttributeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/debias_compare"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Run ERM and every method on one configuration; write comparison.csv/json and Pareto figures."""
    claim(out, wait)
    overrides = _overrides(set_, checkpoint=checkpoint, attribute=attribute, **{"data.root": external})
    cfg = load(DebiasCompareConfig, config, overrides, seed)
    result = run_compare(cfg, out)
    if not quiet:
        _print_compare(result["table"], cfg.eval_splits[0])
        if result["dominated_by"]:
            console().print(f"swift is dominated (beyond CIs) by: {', '.join(result['dominated_by'])}")
        console().print(f"wrote {out}")


def apply_thresholds(thresholds: Path, predictions: Path, attribute: str | None, out: Path) -> pd.DataFrame:
    """Add ``p_decision`` (P(1) under the saved per-group thresholds) and ``decision`` (a seeded 0/1
    draw) to a predictions CSV (``score`` + the attribute column); written atomically to ``out``."""
    from trustmed.audit import read_predictions
    from trustmed.debias.baselines import GroupThresholds
    from trustmed.io import atomic_write_text

    rules = GroupThresholds.load(thresholds)
    attribute = attribute or rules.attribute
    if not attribute:
        raise InputError(f"{thresholds}: no attribute stored; pass --attribute")
    df = read_predictions(predictions)
    for column in ("score", attribute):
        if column not in df.columns:
            raise InputError(
                f"{predictions}: column {column!r} not found; available: {', '.join(df.columns)}"
            )
    scores = pd.to_numeric(df["score"], errors="coerce")
    bad = scores.isna() | df[attribute].isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise InputError(f"{predictions}: row {row + 2}: score or {attribute!r} is missing or not a number")
    groups = df[attribute].astype(str).to_numpy()
    df["p_decision"] = rules.probability(scores.to_numpy(), groups)
    df["decision"] = rules.decide(scores.to_numpy(), groups).astype(int)
    atomic_write_text(out, df.to_csv(index=False))
    return df


@app.command("apply-thresholds")
@cli_command
def apply_thresholds_cmd(
    thresholds: Annotated[
        Path, typer.Argument(help="group_thresholds.json written by --method group_thresholds.")
    ],
    predictions: Annotated[Path, typer.Option("--predictions", help="Predictions CSV (score + attribute).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV.")],
    attribute: AttributeOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Apply saved per-group thresholds to any predictions CSV: adds p_decision and decision."""
    claim(out, wait, kind="file")
    df = apply_thresholds(thresholds, predictions, attribute, out)
    if not quiet:
        console().print(f"{len(df)} decisions (mean {df['decision'].mean():.3f}); wrote {out}")


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="debias")
