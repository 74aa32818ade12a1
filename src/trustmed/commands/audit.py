"""``trustmed audit``: fairness metrics with bootstrap CIs for a predictions CSV or a checkpoint.

From a CSV::

    trustmed audit --predictions preds.csv --label-col y --score-col p --group-col skin_tone \\
        --patient-col patient_id --n-boot 1000 --out runs/audit

or from a trained checkpoint and a dataset (the predictions are computed first)::

    trustmed audit --checkpoint runs/train --dataset synthskin --root data/synthskin \\
        --group-col skin_tone --out runs/audit

Writes ``metrics.json``, ``audit.md``, ``figures/*.png`` (and ``predictions.csv`` in checkpoint
mode) into ``--out``, all or nothing. Rows whose attribute is ``unknown`` or missing are reported as
their own group and left out of the gaps unless ``--include-unknown``; constant (or chance-level)
predictions get a warning line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trustmed.commands.common import config_command, console

__all__ = ["audit_cmd", "register"]


_FLAGS = {
    "predictions": "predictions",
    "label_col": "label_col",
    "score_col": "score_col",
    "group_col": "group_cols",
    "patient_col": "patient_col",
    "n_boot": "n_boot",
    "min_group_size": "min_group_size",
    "include_unknown": "include_unknown",
    "threshold": "threshold",
    "val_predictions": "val_predictions",
    "val_split": "val_split",
    "threshold_method": "threshold_method",
    "target_specificity": "target_specificity",
    "checkpoint": "checkpoint",
    "dataset": "dataset",
    "root": "root",
    "split": "split",
}


@config_command("trustmed.audit:AuditConfig", out="runs/audit", flags=_FLAGS)
def audit_cmd(
    cfg,
    out: Path,
    quiet: bool,
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
    include_unknown: Annotated[
        bool | None,
        typer.Option(
            "--include-unknown/--exclude-unknown",
            help="Count rows whose attribute is 'unknown' or missing in the gaps (default: reported as "
            "their own group, left out of the gaps).",
        ),
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
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint folder (model.safetensors), or a model spec file (.yaml) of your own model."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset name, with --checkpoint (default: the data a trustmed checkpoint was trained on)."
        ),
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Dataset root folder, with --checkpoint (default: as --dataset).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to audit, with --checkpoint.")] = None,
) -> None:
    """Audit a classifier's fairness: group metrics, gaps and bootstrap CIs."""
    from trustmed.audit import audit_pipeline

    result = audit_pipeline(cfg, out)
    con = console()
    if not con.is_terminal:
        con.width = max(con.width, 150)  # a log file or pipe: keep each table row on one line
    degenerate = result.degenerate_warning()
    if not quiet:
        for rich_table in result.rich_tables():
            con.print(rich_table)
        for warning in result.metrics["warnings"]:
            if not (degenerate and warning.startswith(result.metrics["degenerate"]["reason"])):
                con.print(f"[yellow]note:[/yellow] {warning}")
    if degenerate:
        con.print(f"[bold red]warning:[/bold red] {degenerate}")
    con.print(f"wrote {out / 'metrics.json'}, {out / 'audit.md'} and {out / 'figures'}/")


def register(app: typer.Typer) -> None:
    app.command(
        "audit",
        help="Fairness audit: group metrics, gaps and bootstrap CIs.\n\n"
        "Example: trustmed audit --predictions runs/train/predictions_test.csv --group-col skin_tone "
        "--out runs/audit",
    )(audit_cmd)
