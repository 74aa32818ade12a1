"""Fairness audit of a predictions table: metrics with bootstrap CIs, a summary, figures, a report section.

The audit is the first step of every workflow in trustmed: a classifier's predictions (one row per
image: label, score, sensitive attributes, optional patient id) go in; ``metrics.json`` (the layout
of ``METRICS.md``), ``audit.md`` and figures come out. The metrics are those of
:mod:`trustmed.metrics.fairness` (MEDFAIR-style group metrics and gaps, Zong et al.,
arXiv:2210.01725, with cluster/stratified percentile-bootstrap intervals).

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> df = pd.DataFrame({"label": rng.integers(0, 2, 300), "skin": rng.choice(["light", "dark"], 300)})
>>> df["score"] = np.clip(0.4 * df["label"] + 0.6 * rng.random(300), 0, 1)
>>> result = run_audit(df, group_cols=["skin"], n_boot=100)
>>> sorted(result.metrics["groups"])
['dark', 'light']
>>> result.section().title
'Fairness audit'
"""

from __future__ import annotations

import html
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from trustmed.config import Config, NBoot
from trustmed.errors import InputError
from trustmed.io import atomic_write_bytes, atomic_write_text, read_csv, write_json
from trustmed.metrics.fairness import GAP_METRICS, UNKNOWN, choose_threshold, fairness_report
from trustmed.report import Section, figure_to_html, table_to_html
from trustmed.report.figures import calibration_png, group_metrics_png, roc_curves_png

__all__ = ["AuditConfig", "AuditResult", "KEY_METRICS", "audit_pipeline", "read_predictions", "run_audit"]

logger = logging.getLogger(__name__)

KEY_METRICS: tuple[str, ...] = ("auc", "accuracy", "tpr", "fpr", "selection_rate", "ppv", "ece")
"""Per-group metrics shown in the terminal table, ``audit.md`` and the report (all are in metrics.json)."""

_DIRECTION = {
    "dp_gap": "lower is fairer",
    "eopp_tpr_gap": "lower is fairer",
    "eopp_fpr_gap": "lower is fairer",
    "eodds_max_gap": "lower is fairer",
    "eodds_mean_gap": "lower is fairer",
    "auc_gap": "lower is fairer",
    "worst_group_auc": "higher is better",
    "worst_group_accuracy": "higher is better",
}

_FIGURES = {
    "roc": ("figures/roc_per_group.png", "ROC curve of each group"),
    "calibration": ("figures/calibration_per_group.png", "Reliability diagram of each group (15 bins)"),
    "group_metrics": ("figures/group_metrics.png", "Group metrics with 95% bootstrap CIs"),
}


def read_predictions(path: str | os.PathLike, what: str = "predictions") -> pd.DataFrame:
    """Read a predictions CSV, turning missing, empty or unreadable files into :class:`InputError`."""
    return read_csv(path, what=f"{what} file")


@dataclass
class AuditResult:
    """What an audit produced: the ``metrics.json`` dict, the threshold and where it came from,
    the figures (PNG bytes) and, after :meth:`write`, the paths of the files written."""

    metrics: dict[str, Any]
    threshold_source: str
    figures: dict[str, bytes]
    title: str = "Fairness audit"
    clustered: bool = False
    paths: dict[str, Path] = field(default_factory=dict)

    # -- formatting -------------------------------------------------------------------------
    @staticmethod
    def format_entry(entry: dict[str, Any] | None) -> str:
        """``0.912 [0.890, 0.931]``; an undefined value is ``—``."""
        if entry is None or entry.get("value") is None or math.isnan(entry["value"]):
            return "—"
        text = f"{entry['value']:.3f}"
        ci = entry.get("ci")
        if ci and ci[0] is not None and not math.isnan(ci[0]):
            text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
        return text

    def group_table(self) -> pd.DataFrame:
        """One row per group plus ``overall``: counts and the key metrics as ``value [lo, hi]``; a group
        below ``min_group_size`` is named ``<group> (small)``, a group left out of the gaps (an
        unknown attribute) ``<group> (excluded)``."""
        rows = []
        blocks = {**self.metrics["groups"], "overall": self.metrics["overall"]}
        for name, block in blocks.items():
            marks = [
                m
                for m, on in (("small", block.get("small")), ("excluded", block.get("excluded_from_gaps")))
                if on
            ]
            shown = f"{name} ({', '.join(marks)})" if marks else name
            row = {"group": shown, "n": block["n"], "n_pos": block["n_pos"]}
            row.update({key: self.format_entry(block[key]) for key in KEY_METRICS})
            rows.append(row)
        return pd.DataFrame(rows)

    def gap_table(self) -> pd.DataFrame:
        """One row per gap / worst-group value with its CI and direction; the values of degenerate
        predictions (:meth:`degenerate_warning`) are marked ``⚠``."""
        mark = " ⚠" if self.degenerate_warning() else ""
        return pd.DataFrame(
            [
                {
                    "metric": key,
                    "value [95% CI]": self.format_entry(self.metrics["gaps"][key]) + mark,
                    "direction": _DIRECTION[key],
                }
                for key in GAP_METRICS
            ]
        )

    def degenerate_warning(self) -> str | None:
        """One line when the audited predictions are constant or no better than chance, else ``None``."""
        degenerate = self.metrics.get("degenerate")
        if not degenerate:
            return None
        return (
            f"{degenerate['reason']} at threshold {self.metrics['threshold']:.3g}: every gap of such "
            "predictions is (near) 0 without saying anything about fairness"
        )

    def _ci_words(self) -> str:
        n_boot = self.metrics["n_boot"]
        if n_boot == 0:
            return "no confidence intervals (n_boot = 0)"
        return f"95% percentile-bootstrap intervals from {n_boot} replicates, stratified by group" + (
            ", resampling whole patients" if self.clustered else ""
        )

    def rich_tables(self) -> list[Any]:
        """Rich tables for the terminal: groups (key metrics with CIs), then gaps."""
        from rich.table import Table

        groups = Table(
            title=f"{self.title}: {self.metrics['attribute']} (threshold {self.metrics['threshold']:.3g})"
        )
        frame = self.group_table()
        for col in frame.columns:
            groups.add_column(col, justify="left" if col == "group" else "right")
        for _, row in frame.iterrows():
            cells = [str(v).replace(" [", "\n[", 1) for v in row]  # value above its CI keeps columns narrow
            groups.add_row(*cells, style="bold" if row["group"] == "overall" else None)
        gaps = Table(title="Gaps (between groups) and worst-group values")
        for col in ("metric", "value [95% CI]", "direction"):
            gaps.add_column(col, justify="right" if col == "value [95% CI]" else "left")
        for _, row in self.gap_table().iterrows():
            gaps.add_row(*[str(v) for v in row])
        return [groups, gaps]

    def markdown(self) -> str:
        """The human-readable ``audit.md``."""
        m = self.metrics
        degenerate = self.degenerate_warning()
        lines = [
            f"# {self.title}",
            "",
            *([f"> **Warning:** {degenerate}", ""] if degenerate else []),
            f"- attribute: `{m['attribute']}` ({len(m['groups'])} groups, {m['overall']['n']} predictions, "
            f"{m['overall']['n_pos']} positives)",
            f"- threshold: {m['threshold']:.6g} ({self.threshold_source}); thresholded metrics use "
            "ŷ = 1[score ≥ threshold]",
            f"- uncertainty: {self._ci_words()}",
            "",
            "## Groups",
            "",
            _markdown_table(self.group_table()),
            "",
            "`n`: predictions in the group; `n_pos`: positives. All metrics of every group, with CIs, are in "
            "`metrics.json`.",
            "",
            "## Gaps",
            "",
            _markdown_table(self.gap_table()),
            "",
            "A gap is max − min over the groups where the metric is defined (fairlearn's "
            "`between_groups` difference); MEDFAIR reports 1 − gap. A group marked `(excluded)` has an "
            "unknown attribute: it is reported above but left out of the gaps and worst-group values"
            + (" (here counted: include_unknown)." if m.get("include_unknown") else "."),
            "",
            "## Notes",
            "",
        ]
        notes = list(m["warnings"]) or ["every metric is defined for every group"]
        lines += [f"- {note}" for note in notes]
        lines += ["- `—` marks an undefined number (NaN in the data, `null` in metrics.json); it is never 0."]
        if self.figures:
            lines += ["", "## Figures", ""]
            for key in self.figures:
                rel, caption = _FIGURES[key]
                lines += [f"![{caption}]({rel})", ""]
        return "\n".join(lines).rstrip() + "\n"

    def section(self) -> Section:
        """The audit as a section of the HTML report (tables, figures, a plain-words summary)."""
        m = self.metrics
        gap = m["gaps"]["eodds_max_gap"]
        summary = (
            f"<p>The classifier was audited on {m['overall']['n']} predictions across "
            f"{len(m['groups'])} groups of <code>{html.escape(str(m['attribute']))}</code>. "
            f"The largest equalised-odds gap (the larger of the between-group differences in true- and "
            f"false-positive rate at threshold {m['threshold']:.3g}) is {self.format_entry(gap)}; "
            f"0 would mean every group gets the same error rates. Intervals: {self._ci_words()}.</p>"
        )
        notes = "".join(f"<li>{html.escape(w)}</li>" for w in m["warnings"])
        degenerate = self.degenerate_warning()
        body = [f'<p class="note"><b>Warning:</b> {html.escape(degenerate)}</p>'] if degenerate else []
        body += [summary, table_to_html(self.group_table()), table_to_html(self.gap_table())]
        if notes:
            body.append(f'<div class="note"><ul>{notes}</ul></div>')
        body += [figure_to_html(png, _FIGURES[key][1]) for key, png in self.figures.items()]
        return Section(self.title, "\n".join(body))

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``metrics.json``, ``audit.md`` and ``figures/*.png`` into ``out_dir``, each atomically."""
        out = Path(out_dir)
        paths = {"metrics": write_json(out / "metrics.json", self.metrics)}
        for key, png in self.figures.items():
            paths[key] = atomic_write_bytes(out / _FIGURES[key][0], png)
        paths["audit"] = atomic_write_text(out / "audit.md", self.markdown())
        self.paths = paths
        return paths


def _markdown_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _require_columns(df: pd.DataFrame, columns: list[str], where: str) -> None:
    available = ", ".join(str(c) for c in df.columns)
    for col in columns:
        if col not in df.columns:
            raise InputError(f"{where}: column '{col}' not found; available: {available}")


def _labels(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    values = df[col]
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise InputError(
            f"{where}: column '{col}' has {int(values.isna().sum())} missing label(s) (row {row})"
        )
    numeric = pd.to_numeric(values, errors="coerce") if values.dtype != bool else values.astype(float)
    bad = numeric.isna() | ~numeric.isin([0, 1])
    if bad.any():
        shown = ", ".join(sorted({str(v) for v in values[bad]})[:5])
        raise InputError(f"{where}: column '{col}' must hold binary labels 0/1; found {shown}")
    return numeric.to_numpy(dtype=np.float64)


def _scores(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    numeric = pd.to_numeric(df[col], errors="coerce")
    nonnumeric = numeric.isna() & df[col].notna()
    if nonnumeric.any():
        shown = ", ".join(sorted({str(v) for v in df[col][nonnumeric]})[:3])
        raise InputError(f"{where}: column '{col}' must hold numbers in [0, 1]; found {shown}")
    if numeric.isna().any():
        row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
        raise InputError(
            f"{where}: column '{col}' has {int(numeric.isna().sum())} NaN score(s) (first at row {row})"
        )
    s = numeric.to_numpy(dtype=np.float64)
    out = np.flatnonzero((s < 0) | (s > 1))
    if out.size:
        raise InputError(
            f"{where}: column '{col}' must hold scores in [0, 1]; row {out[0]} has {s[out[0]]:g} "
            f"({out.size} out of range; pass probabilities, not logits)"
        )
    return s


def run_audit(
    predictions: pd.DataFrame,
    *,
    label_col: str = "label",
    score_col: str = "score",
    group_cols: list[str],
    patient_col: str | None = None,
    n_boot: int = 1000,
    threshold: float | None = None,
    val_predictions: pd.DataFrame | None = None,
    threshold_method: str = "youden",
    target_specificity: float | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    title: str = "Fairness audit",
    figures: bool = True,
    source: str = "predictions",
    min_group_size: int = 30,
    include_unknown: bool = False,
) -> AuditResult:
    """Audit a predictions table: every fairness metric with bootstrap CIs, figures and a summary.

    Parameters
    ----------
    predictions
        One row per prediction with the label, score and sensitive-attribute columns.
    label_col, score_col
        Binary label (0/1) and score in [0, 1] columns.
    group_cols
        Sensitive-attribute columns; several give their intersections (``sex=F&age=old``).
    patient_col
        Optional patient id column: the bootstrap then resamples whole patients.
    n_boot
        Bootstrap replicates (0: point estimates only).
    threshold
        Fixed decision threshold; default 0.5. Give either this or ``val_predictions``.
    val_predictions
        Validation predictions (same label/score columns) on which the threshold is chosen with
        ``threshold_method`` (``youden``, ``f1`` or ``specificity`` with ``target_specificity``).
    seed
        Seed of the bootstrap.
    out_dir
        When given, ``metrics.json``, ``audit.md`` and ``figures/*.png`` are written there.
    title
        Title of the summary and of the report section.
    figures
        Draw the figures (off: faster, for repeated programmatic use).
    source
        How the predictions are named in error messages (e.g. the CSV path).
    min_group_size
        Groups with fewer predictions are flagged as small (``"small": true`` in metrics.json,
        ``(small)`` in the tables, one warning); their CIs are still computed.
    include_unknown
        Rows whose attribute is ``"unknown"`` or missing (read as ``"unknown"``, with a warning
        giving the count) are their own group, reported (``"excluded_from_gaps": true``,
        ``(excluded)`` in the tables) but left out of the gaps and worst-group values; ``True``
        counts them like any other group.

    Returns
    -------
    AuditResult

    Raises
    ------
    InputError
        Empty table, missing columns (the message lists the available ones), non-binary labels,
        NaN or out-of-range scores, a single group, or conflicting threshold options.
    """
    if predictions is None or len(predictions) == 0:
        raise InputError(f"{source}: the predictions table is empty")
    group_cols = list(group_cols or [])
    if not group_cols:
        raise InputError("no group column given; pass at least one sensitive attribute (--group-col)")
    needed = [label_col, score_col, *group_cols, *([patient_col] if patient_col else [])]
    _require_columns(predictions, needed, source)
    y = _labels(predictions, label_col, source)
    s = _scores(predictions, score_col, source)
    groups = predictions[group_cols].reset_index(drop=True)
    if len(group_cols) == 1:
        col = group_cols[0]
        values = groups[col].astype(object).where(groups[col].notna(), UNKNOWN)
        counted = values if include_unknown else values[values.astype(str) != UNKNOWN]
        if counted.nunique() < 2:
            only = counted.iloc[0] if len(counted) else values.iloc[0]
            besides = "" if include_unknown or len(counted) == len(values) else f" besides '{UNKNOWN}'"
            raise InputError(
                f"{source}: group column '{col}' has one group only ('{only}'){besides}; "
                "a fairness audit needs at least 2"
            )

    if val_predictions is not None and threshold is not None:
        raise InputError("give either a fixed threshold or validation predictions, not both")
    if val_predictions is not None:
        where = "validation predictions"
        if len(val_predictions) == 0:
            raise InputError(f"{where}: the table is empty")
        _require_columns(val_predictions, [label_col, score_col], where)
        threshold = choose_threshold(
            _labels(val_predictions, label_col, where),
            _scores(val_predictions, score_col, where),
            method=threshold_method,
            target_specificity=target_specificity,
        )
        how = (
            f"{threshold_method}, target specificity {target_specificity}"
            if threshold_method == "specificity"
            else threshold_method
        )
        threshold_source = f"chosen on {len(val_predictions)} validation predictions by {how}"
    else:
        threshold = 0.5 if threshold is None else float(threshold)
        threshold_source = "fixed" if threshold != 0.5 else "fixed, the default"

    patients = predictions[patient_col].to_numpy() if patient_col else None
    try:
        metrics = fairness_report(
            y,
            s,
            groups=groups,
            threshold=threshold,
            patient_ids=patients,
            n_boot=n_boot,
            seed=seed,
            min_group_size=min_group_size,
            include_unknown=include_unknown,
        )
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    pngs: dict[str, bytes] = {}
    if figures:
        names = _group_names(metrics, groups)
        pngs = {
            "roc": roc_curves_png(y, s, names),
            "calibration": calibration_png(y, s, names),
            "group_metrics": group_metrics_png(metrics),
        }
    result = AuditResult(
        metrics=metrics,
        threshold_source=threshold_source,
        figures=pngs,
        title=title,
        clustered=patient_col is not None,
    )
    if out_dir is not None:
        result.write(out_dir)
    return result


def _group_names(metrics: dict[str, Any], groups: pd.DataFrame) -> np.ndarray:
    """The report's group name of each row (``value`` or ``attr=value&…``; missing is ``unknown``)."""
    groups = groups.astype(object).where(groups.notna(), UNKNOWN)
    if groups.shape[1] == 1:
        return groups.iloc[:, 0].astype(str).to_numpy()
    parts = [f"{col}=" + groups[col].astype(str) for col in groups.columns]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + "&" + part
    return joined.to_numpy()


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
    options: dict[str, Any] = {}
    split: str = "test"
    title: str = "Fairness audit"
    min_group_size: int = Field(30, ge=1)
    include_unknown: bool = False
    seed: int = 0


def _predictions_from_checkpoint(cfg: AuditConfig, split: str) -> pd.DataFrame:
    from trustmed.train.classifier import predictions_for_checkpoint

    if cfg.dataset is None or cfg.root is None:
        raise InputError(
            "--checkpoint needs --dataset NAME and --root DIR "
            "(a trustmed checkpoint defaults to the data it was trained on)"
        )
    return predictions_for_checkpoint(
        cfg.checkpoint, dataset=cfg.dataset, root=cfg.root, split=split, options=cfg.options or None
    )


def _checkpoint_defaults(cfg: AuditConfig) -> AuditConfig:
    """``dataset``, ``root`` and ``group_cols`` not given default to the checkpoint's training data
    and its first recorded attribute."""
    from trustmed.io import read_json

    meta_file = Path(cfg.checkpoint) / "model.json"
    if not meta_file.is_file():
        return cfg
    data = (read_json(meta_file, what="model.json").get("metadata") or {}).get("config", {}).get("data", {})
    update: dict[str, Any] = {}
    if cfg.dataset is None and cfg.root is None and data.get("dataset") and data.get("root"):
        update.update(dataset=data["dataset"], root=Path(data["root"]))
    if not cfg.group_cols and data.get("attributes"):
        update["group_cols"] = list(data["attributes"])[:1]
    return cfg.model_copy(update=update) if update else cfg


def _resolve(cfg: AuditConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The predictions (and validation predictions) to audit, and how to name them in messages."""
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


def audit_pipeline(cfg: AuditConfig, out: str | os.PathLike) -> AuditResult:
    """``trustmed audit``: resolve the predictions (a CSV, or a checkpoint run on a dataset), audit them
    and write ``metrics.json``, ``audit.md``, ``figures/`` (and ``predictions.csv`` from a checkpoint)
    into ``out``, all or nothing."""
    from trustmed.outdir import staged_dir

    if cfg.checkpoint is not None and cfg.predictions is None:
        cfg = _checkpoint_defaults(cfg)
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
            include_unknown=cfg.include_unknown,
            out_dir=tmp,
            title=cfg.title,
            source=source,
        )
        if cfg.checkpoint is not None:
            table.to_csv(tmp / "predictions.csv", index=False)
    return result
