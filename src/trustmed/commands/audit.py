"""``trustmed audit``: fairness metrics with bootstrap CIs for a predictions CSV or a checkpoint.

From a CSV::

    trustmed audit --predictions preds.csv --label-col y --score-col p --group-col skin_tone \\
        --patient-col patient_id --n-boot 1000 --out runs/audit

or from a trained checkpoint and a dataset (the predictions are computed first)::

    trustmed audit --checkpoint runs/train --dataset synthskin --root data/synthskin \\
        --group-col skin_tone --out runs/audit

Writes ``metrics.json``, ``audit.md``, ``figures/*.png`` (and ``predictions.csv`` in checkpoint
mode) into ``--out``, all or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

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

__all__ = ["AuditConfig", "audit_cmd", "register"]


class AuditConfig(Config):
    """Config of ``trustmed audit``; every field has a flag of the same name (``--n-boot`` …)."""

    predictions: Path | None = None
    label_col: str = "label"
    score_col: str = "score"
    group_cols: list[str] = []
    patient_col: str | None = None
    n_boot: NBoot = 1000
    threshold: float | None = None
    val_predictions: Path | None = None
    val_split: str | None = None
    threshold_method: Literal["youden", "f1", "specificity"] = "youden"
    target_specificity: float | None = None
    checkpoint: Path | None = None
    dataset: str | None = None
    root: Path | None = None
    split: str = "test"
    title: str = "Fairness audit"
    min_group_size: int = Field(30, ge=1)
    seed: int = 0


def _predictions_from_checkpoint(cfg: AuditConfig, split: str) -> pd.DataFrame:
    from trustmed.train.classifier import predictions_for_checkpoint

    if cfg.dataset is None or cfg.root is None:
        raise InputError("--checkpoint needs --dataset NAME and --root DIR")
    return predictions_for_checkpoint(cfg.checkpoint, dataset=cfg.dataset, root=cfg.root, split=split)


def _resolve(cfg: AuditConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The predictions (and validation predictions) to audit, and how to name them in messages."""
    from trustmed.audit import read_predictions

    if (cfg.predictions is None) == (cfg.checkpoint is None):
        raise InputError("give either --predictions FILE.csv or --checkpoint DIR (with --dataset and --root)")
    if cfg.val_predictions is not None and cfg.threshold is not None:
        raise InputError("give either --threshold or --val-predictions, not both")
    val = read_predictions(cfg.val_predictions, "validation predictions") if cfg.val_predictions else None
    if cfg.predictions is not None:
        if cfg.val_split is not None:
            raise InputError("--val-split needs --checkpoint; with a CSV use --val-predictions")
        return read_predictions(cfg.predictions), val, str(cfg.predictions)
    predictions = _predictions_from_checkpoint(cfg, cfg.split)
    if cfg.val_split is not None:
        if val is not None or cfg.threshold is not None:
            raise InputError("give one of --threshold, --val-predictions, --val-split")
        val = _predictions_from_checkpoint(cfg, cfg.val_split)
    return predictions, val, f"{cfg.checkpoint} on {cfg.dataset}/{cfg.split}"


@cli_command
def audit_cmd(
    predictions: Annotated[Path | None, typer.Option(help="Predictions CSV (one row per image).")] = None,
    label_col: Annotated[str | None, typer.Option(help="Binary label column (0/1).")] = None,
    score_col: Annotated[str | None, typer.Option(help="Score column, in [0, 1].")] = None,
    group_col: Annotated[
        list[str] | None, typer.Option(help="Sensitive attribute column (repeat for intersections).")
    ] = None,
    patient_col: Annotated[
        str | None, typer.Option(help="Patient id column: resample whole patients.")
    ] = None,
    n_boot: Annotated[
        int | None, typer.Option(help="Bootstrap replicates: 0 (no CIs) or at least 200 (default 1000).")
    ] = None,
    min_group_size: Annotated[
        int | None, typer.Option(help="Flag groups with fewer predictions as small (default 30).")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Fixed decision threshold (default 0.5).")] = None,
    val_predictions: Annotated[
        Path | None, typer.Option(help="Validation predictions CSV on which to choose the threshold.")
    ] = None,
    val_split: Annotated[
        str | None, typer.Option(help="With --checkpoint: choose the threshold on this split.")
    ] = None,
    threshold_method: Annotated[str | None, typer.Option(help="youden | f1 | specificity.")] = None,
    target_specificity: Annotated[
        float | None, typer.Option(help="Target specificity for --threshold-method specificity.")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint folder (model.safetensors).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name, with --checkpoint.")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root folder, with --checkpoint.")] = None,
    split: Annotated[str | None, typer.Option(help="Split to audit, with --checkpoint.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("runs/audit"),
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Audit a classifier's fairness: group metrics, gaps and bootstrap CIs."""
    from trustmed.audit import run_audit
    from trustmed.outdir import staged_dir

    claim(out, wait)

    flags = {
        "predictions": predictions,
        "label_col": label_col,
        "score_col": score_col,
        "group_cols": group_col or None,
        "patient_col": patient_col,
        "n_boot": n_boot,
        "min_group_size": min_group_size,
        "threshold": threshold,
        "val_predictions": val_predictions,
        "val_split": val_split,
        "threshold_method": threshold_method,
        "target_specificity": target_specificity,
        "checkpoint": checkpoint,
        "dataset": dataset,
        "root": root,
        "split": split,
    }
    cfg = load(AuditConfig, config, set_, seed, flags=flags, flag_names={"group_cols": "--group-col"})
    table, val, source = _resolve(cfg)
    with staged_dir(out) as tmp:
        result = run_audit(
            table,
            label_col=cfg.label_col,
            score_col=cfg.score_col,
            group_cols=cfg.group_cols,
            patient_col=cfg.patient_col,
            n_boot=cfg.n_boot,
            threshold=cfg.threshold,
            val_predictions=val,
            threshold_method=cfg.threshold_method,
            target_specificity=cfg.target_specificity,
            seed=cfg.seed,
            min_group_size=cfg.min_group_size,
            out_dir=tmp,
            title=cfg.title,
            source=source,
        )
        if cfg.checkpoint is not None:
            table.to_csv(tmp / "predictions.csv", index=False)
    con = console()
    if not con.is_terminal:
        con.width = max(con.width, 150)  # a log file or pipe: keep each table row on one line
    if not quiet:
        for rich_table in result.rich_tables():
            con.print(rich_table)
        for warning in result.metrics["warnings"]:
            con.print(f"[yellow]note:[/yellow] {warning}")
    con.print(f"wrote {out / 'metrics.json'}, {out / 'audit.md'} and {out / 'figures'}/")


def register(app: typer.Typer) -> None:
    app.command("audit", help="Fairness audit: group metrics, gaps and bootstrap CIs.")(audit_cmd)
