"""The debiasing benchmark's tables: mean ± std over seeds, as data frames and GitHub markdown."""

from __future__ import annotations

import pandas as pd

from _lib.bench import markdown

__all__ = ["COLUMNS", "headline_table", "markdown_table", "summary_table"]

COLUMNS = (
    "auc",
    "balanced_accuracy",
    "eodds_mean_gap",
    "eopp_tpr_gap",
    "dp_gap",
    "worst_group_auc",
    "wall_time_s",
)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (attribute, external size, split, threshold, method)."""
    keys = ["attribute", "n_external", "split", "threshold", "method"]
    grouped = table.groupby(keys, sort=False)[list(COLUMNS)]
    mean, std = grouped.mean(), grouped.std(ddof=0).fillna(0.0)
    out = mean.copy().astype(object)
    for col in COLUMNS:
        fmt = "{:.1f} ± {:.1f}" if col == "wall_time_s" else "{:.3f} ± {:.3f}"
        out[col] = [fmt.format(m, s) for m, s in zip(mean[col], std[col], strict=True)]
    return out.reset_index()


def headline_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds: test AUC, eodds gap at 0.5 and tuned, OOD AUC and gap, wall time.

    Methods that need the attribute at prediction time are marked ``*``.
    """

    def stat(split: str, threshold: str, col: str, digits: int = 3) -> pd.Series:
        rows = table[(table["split"] == split) & (table["threshold"] == threshold)]
        grouped = rows.groupby(["attribute", "n_external", "method"], sort=False)[col]
        mean, std = grouped.mean(), grouped.std(ddof=0).fillna(0.0)
        return pd.Series(
            [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean, std, strict=True)], mean.index
        )

    out = pd.DataFrame(
        {
            "test AUC": stat("test", "0.5", "auc"),
            "test eodds gap @0.5": stat("test", "0.5", "eodds_mean_gap"),
            "test eodds gap @tuned": stat("test", "tuned", "eodds_mean_gap"),
            "test worst-group AUC": stat("test", "0.5", "worst_group_auc"),
            "OOD AUC": stat("ood", "0.5", "auc"),
            "OOD eodds gap @0.5": stat("ood", "0.5", "eodds_mean_gap"),
            "wall s": stat("test", "0.5", "wall_time_s", 1),
        }
    ).reset_index()
    flagged = out["method"].isin(set(table.loc[table["needs_attribute_at_prediction"], "method"]))
    out.loc[flagged, "method"] = out.loc[flagged, "method"] + " *"
    return out


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table."""
    return markdown(list(df.columns), list(df.itertuples(index=False)))
