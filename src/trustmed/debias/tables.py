"""A comparison of debiasing methods as a table, the dominance test on it, and its Pareto figure.

:func:`comparison_table` flattens a :class:`~trustmed.debias.selection.Comparison` into one row
per (method, split, threshold) with 95 % CIs (``<metric>_lo`` / ``<metric>_hi``), cost, the
attribute-at-prediction flag and the result's flag (``flag``: a short label, ``flag_reason``: why;
empty for a healthy result): a setting that failed the validation guard, or predictions that are
constant or no better than chance (:func:`~trustmed.debias.selection.result_flags`), whose 0.000
gap is no evidence of fairness. :func:`dominating_methods` reads the table (dominance beyond the
CIs) and :func:`pareto_figure` draws gap against AUC from it, flagged points greyed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustmed.debias.registry import METHODS
from trustmed.debias.selection import GAPS, REPORTED, Comparison, result_flags
from trustmed.errors import InputError

__all__ = ["COST_KEYS", "FLAG_MARK", "comparison_table", "dominating_methods", "flag_label", "pareto_figure"]

COST_KEYS = ("wall_time_s", "epochs", "samples_seen", "parameter_updates")

FLAG_MARK = "⚠"
"""The mark of a flagged result in the printed tables."""

_SHORT = {
    "failed validation guard": "failed guard",
    "constant predictions": "constant",
    "predictions no better than chance": "chance level",
}


def flag_label(reasons: Sequence[str] | str | None) -> str:
    """A short label for flag reasons (``"failed guard + constant"``); empty when there are none.

    >>> flag_label(["failed validation guard (val AUC 0.610 < ERM 0.800 − 0.02)",
    ...             "constant predictions (all negative, balanced accuracy 0.500)"])
    'failed guard + constant'
    """
    if not reasons:
        return ""
    if isinstance(reasons, str):
        reasons = reasons.split("; ")
    labels = []
    for reason in reasons:
        head = reason.split(" (", 1)[0]
        labels.append(_SHORT.get(head, head))
    return " + ".join(dict.fromkeys(labels))


def comparison_table(comparison: Comparison) -> pd.DataFrame:
    """One row per (method, split, threshold): metrics with CIs, cost, the attribute flag, and the
    result's ``flag`` / ``flag_reason`` (empty strings for a healthy result)."""
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
                reasons = result_flags(res, report)
                row["flag"] = flag_label(reasons)
                row["flag_reason"] = "; ".join(reasons)
                for key in REPORTED:
                    _put(row, key, report["overall"][key])
                for key in GAPS:
                    _put(row, key, report["gaps"][key])
                row.update({k: res.cost[k] for k in COST_KEYS})
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
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """Methods whose AUC is higher **and** gap lower than ``target``'s, both beyond the CIs (no overlap).

    ``exclude`` defaults to the registered methods that need the attribute at prediction time and
    the ablations.
    """
    if exclude is None:
        exclude = [m.name for m in METHODS.values() if m.needs_attribute or m.ablation_of is not None]
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
    """Gap (x) against AUC (y) per method, with 95 % CI bars; attribute-at-prediction methods hollow;
    flagged results (``flag``: failed guard, constant or chance-level predictions) grey and hollow,
    their legend entry naming the flag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trustmed.report.figures import save_png

    rows = table[(table["split"] == split) & (table["threshold"] == threshold)]
    fig, ax = plt.subplots(figsize=(6.2, 4.4), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, (_, r) in enumerate(rows.iterrows()):
        xerr = [[max(r[gap] - r[f"{gap}_lo"], 0)], [max(r[f"{gap}_hi"] - r[gap], 0)]]
        yerr = [[max(r["auc"] - r["auc_lo"], 0)], [max(r["auc_hi"] - r["auc"], 0)]]
        flag = r.get("flag")
        flag = flag if isinstance(flag, str) else ""
        hollow = bool(r["needs_attribute_at_prediction"]) or bool(flag)
        color = "0.6" if flag else cmap(i % 10)
        label = r["method"] + (" (needs attribute)" if r["needs_attribute_at_prediction"] else "")
        if flag:
            label += f" [flagged: {flag}]"
        ax.errorbar(
            r[gap],
            r["auc"],
            xerr=np.nan_to_num(xerr),
            yerr=np.nan_to_num(yerr),
            fmt="X" if flag else "o",
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
    save_png(fig, path)
    return Path(path)
