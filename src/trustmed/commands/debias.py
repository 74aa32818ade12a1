"""``trustmed debias run | compare | apply-thresholds``: post-hoc debiasing of a trained classifier.

Each command parses its options, calls one function of :mod:`trustmed.debias.run` and prints. The
methods ``--method`` accepts are those of :mod:`trustmed.debias.registry`. A flagged result (a
setting that failed the validation guard, constant or chance-level predictions) is marked ``⚠`` in
the printed tables, with its reason below them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from typer.core import TyperCommand

from trustmed.commands.common import QuietOpt, WaitOpt, claim, cli_command, config_command, console

__all__ = ["app", "apply_thresholds_cmd", "compare_cmd", "register", "run_cmd"]


class _RegistryHelp(TyperCommand):
    """A command whose ``--method`` help lists the registered methods when the help is shown."""

    def format_help(self, ctx, formatter) -> None:
        from trustmed.debias.registry import method_names

        for param in self.params:
            if param.name == "method":
                param.help = f"Debiasing method: {', '.join(method_names())} (default swift)."
        super().format_help(ctx, formatter)


MethodOpt = Annotated[str | None, typer.Option("--method", "-m")]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="Trained model directory (model.json).")
]
ExternalOpt = Annotated[
    Path | None, typer.Option("--external", help="Dataset root (or manifest CSV) holding the external split.")
]
AttributeOpt = Annotated[str | None, typer.Option("--attribute", "-a", help="Sensitive attribute column.")]
IncludeUnknownOpt = Annotated[
    bool | None,
    typer.Option(
        "--include-unknown/--exclude-unknown",
        help="Fit on rows whose attribute is 'unknown' or missing and count them in the gaps (default: "
        "not fitted on, reported as their own group, left out of the gaps).",
    ),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", help="Dataset loader name (default: the checkpoint's, or 'manifest' for a CSV)."
    ),
]

# options that set config keys: option → key
_DATA_FLAGS = {
    "checkpoint": "checkpoint",
    "attribute": "attribute",
    "external": "data.root",
    "include_unknown": "include_unknown",
}

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Post-hoc debiasing: debias one model with one method (run), compare ERM and every method "
        "side by side (compare), apply saved per-group thresholds (apply-thresholds)."
    ),
)


def _print_run(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from trustmed.debias.run import SUMMARY_KEYS
    from trustmed.debias.tables import FLAG_MARK, flag_label

    flags = summary.get("flags", {})
    table = Table(title=f"{summary['method']} on {summary['attribute']} (threshold 0.5)")
    table.add_column("split")
    table.add_column("when")
    for key in SUMMARY_KEYS:
        table.add_column(key, justify="right")
    footnotes = []
    for split, by_when in summary["splits"].items():
        for when, values in by_when.items():
            reason = flags.get(split, {}).get(when)
            cells = [f"{values.get(k, float('nan')):.3f}" for k in SUMMARY_KEYS]
            if reason:  # the gaps marked, the reason below the table
                cells = [
                    f"{c} {FLAG_MARK}" if k.endswith("_gap") else c
                    for k, c in zip(SUMMARY_KEYS, cells, strict=True)
                ]
                footnotes.append(f"{FLAG_MARK} {split} {when} ({flag_label(reason)}): {reason}")
            table.add_row(split, when, *cells)
    console().print(table)
    for line in [*footnotes, *summary.get("notes", [])]:
        console().print(line)


def _print_compare(table: pd.DataFrame, split: str) -> None:
    from rich.table import Table

    from trustmed.debias.tables import FLAG_MARK

    rows = table[(table["split"] == split) & (table["threshold"] == "0.5")]
    out = Table(title=f"debiasing methods on {split} (threshold 0.5; 95% CIs)")
    for col in ("method", "AUC", "eodds_mean_gap", "worst_group_auc", "wall s"):
        out.add_column(col, justify="left" if col == "method" else "right")
    footnotes = []
    for _, r in rows.iterrows():
        flag = r["flag"] if isinstance(r.get("flag"), str) else ""
        mark = f" {FLAG_MARK} {flag}" if flag else ""
        if flag:
            footnotes.append(f"{FLAG_MARK} {r['method']}: {r['flag_reason']}")
        star = " *" if r["needs_attribute_at_prediction"] else ""
        out.add_row(
            f"{r['method']}{star}{f' {FLAG_MARK}' if flag else ''}",
            f"{r['auc']:.3f}\n[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]",  # value above its CI: narrow columns
            f"{r['eodds_mean_gap']:.3f}{mark}\n[{r['eodds_mean_gap_lo']:.3f}, {r['eodds_mean_gap_hi']:.3f}]",
            f"{r['worst_group_auc']:.3f}",
            f"{r['wall_time_s']:.1f}",
        )
    console().print(out)
    if rows["needs_attribute_at_prediction"].any():
        console().print("* needs the sensitive attribute at prediction time")
    for line in footnotes:
        console().print(line)


@app.command("run", cls=_RegistryHelp)
@config_command(
    "trustmed.debias.run:DebiasRunConfig",
    out="runs/debias",
    flags={**_DATA_FLAGS, "method": "method", "dataset": "data.dataset"},
)
def run_cmd(
    cfg,
    out: Path,
    quiet: bool,
    method: MethodOpt = None,
    checkpoint: CheckpointOpt = None,
    external: ExternalOpt = None,
    attribute: AttributeOpt = None,
    dataset: DatasetOpt = None,
    include_unknown: IncludeUnknownOpt = None,
) -> None:
    """Debias one trained classifier with one method: checkpoint, predictions, before/after audits.

    Example: trustmed debias run --method swift --checkpoint runs/train --external runs/synthskin --attribute skin_tone --out runs/swift
    """  # noqa: E501
    from trustmed.debias.run import run_debias

    summary = run_debias(cfg, out)
    if not quiet:
        _print_run(summary)
    console().print(f"wrote {out}")


@app.command("compare")
@config_command(
    "trustmed.debias.run:DebiasCompareConfig",
    out="runs/debias_compare",
    flags={**_DATA_FLAGS, "quick": "quick"},
)
def compare_cmd(
    cfg,
    out: Path,
    quiet: bool,
    checkpoint: CheckpointOpt = None,
    external: ExternalOpt = None,
    attribute: AttributeOpt = None,
    include_unknown: IncludeUnknownOpt = None,
    quick: Annotated[
        bool | None,
        typer.Option("--quick/--full", help="The registered quick grids (a config's own grids still win)."),
    ] = None,
) -> None:
    """Run ERM and every method on one configuration; write comparison.csv/json and Pareto figures.

    Example: trustmed debias compare --checkpoint runs/train --external runs/synthskin --attribute skin_tone --quick --out runs/compare
    """  # noqa: E501
    from trustmed.debias.run import run_compare

    result = run_compare(cfg, out)
    if not quiet and result.split is not None:
        _print_compare(result.table, result.split)
    if result.dominated_by:
        console().print(f"swift is dominated (beyond CIs) by: {', '.join(result.dominated_by)}")
    console().print(f"wrote {out}")


@app.command("apply-thresholds")
@cli_command
def apply_thresholds_cmd(
    thresholds: Annotated[
        Path, typer.Argument(help="group_thresholds.json written by `debias run --method group_thresholds`.")
    ],
    predictions: Annotated[Path, typer.Option("--predictions", help="Predictions CSV (score + attribute).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV.")],
    attribute: AttributeOpt = None,
    quiet: QuietOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Apply saved per-group thresholds to any predictions CSV: adds p_decision and decision.

    Example: trustmed debias apply-thresholds runs/thresholds/group_thresholds.json --predictions runs/train/predictions_test.csv --out runs/decisions.csv
    """  # noqa: E501
    from trustmed.debias.run import run_apply_thresholds

    claim(out, wait, kind="file")
    table = run_apply_thresholds(thresholds, predictions, out, attribute=attribute)
    if not quiet:
        console().print(f"{len(table)} decisions (mean {table['decision'].mean():.3f})")
    console().print(f"wrote {out}")


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="debias")
