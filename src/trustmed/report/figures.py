"""Figures of a fairness audit: per-group ROC curves, reliability diagrams, group metrics with CIs.

Matplotlib's object API with the Agg canvas (no pyplot state, no display needed). Each function
returns the PNG bytes and, when ``path`` is given, also writes them atomically. Reliability diagrams
follow DeGroot & Fienberg, "The Comparison and Evaluation of Forecasters" (1983), with the
equal-width bins used for the ECE (Guo et al., arXiv:1706.04599).

>>> import numpy as np
>>> png = roc_curves_png([0, 1, 0, 1], [0.2, 0.8, 0.6, 0.7], ["a", "a", "b", "b"])
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from trustmed.io import atomic_write_bytes

__all__ = ["calibration_png", "group_metrics_png", "roc_curves_png", "save_png"]

_DPI = 110


def _new_figure(width: float = 5.2, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike | None = None, *, dpi: float | None = None) -> bytes:
    """Every figure of trustmed becomes PNG bytes here: laid out tightly, without the software
    stamp (the same figure gives the same bytes), written atomically to ``path`` when given, and
    released from pyplot."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, metadata={"Software": None})
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    if "matplotlib.pyplot" in sys.modules:  # a figure made with pyplot stays open until closed
        sys.modules["matplotlib.pyplot"].close(fig)
    return data


def _split(y_true, y_score, groups) -> list[tuple[str, np.ndarray, np.ndarray]]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    g = np.asarray([str(v) for v in groups])
    return [(name, y[g == name], s[g == name]) for name in sorted(set(g.tolist()))]


def roc_curves_png(
    y_true: Sequence[float] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    path: str | os.PathLike | None = None,
    title: str = "ROC curve per group",
) -> bytes:
    """ROC curve of each group (groups with one class only are listed but not drawn)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for name, y, s in _split(y_true, y_score, groups):
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc_score(y, s):.3f}, n={len(y)})")
        else:
            ax.plot([], [], lw=0, label=f"{name} (one class, no curve, n={len(y)})")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title
    )
    ax.legend(loc="lower right", fontsize=7)
    return save_png(fig, path)


def calibration_png(
    y_true: Sequence[float] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    n_bins: int = 15,
    path: str | os.PathLike | None = None,
    title: str = "Reliability diagram per group",
) -> bytes:
    """Observed positive rate against mean score in equal-width bins, one line per group."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect calibration")
    for name, y, s in _split(y_true, y_score, groups):
        bins = np.minimum((s * n_bins).astype(int), n_bins - 1)
        counts = np.bincount(bins, minlength=n_bins)
        used = counts > 0
        mean_s = np.bincount(bins, weights=s, minlength=n_bins)[used] / counts[used]
        mean_y = np.bincount(bins, weights=y, minlength=n_bins)[used] / counts[used]
        ax.plot(mean_s, mean_y, marker="o", ms=3, lw=1.4, label=f"{name} (n={len(y)})")
    ax.set(
        xlabel="mean predicted score", ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1), title=title
    )
    ax.legend(loc="upper left", fontsize=7)
    return save_png(fig, path)


def group_metrics_png(
    report: dict[str, Any],
    *,
    metrics: Sequence[str] = ("auc", "accuracy", "tpr", "fpr", "selection_rate"),
    path: str | os.PathLike | None = None,
    title: str = "Group metrics with 95% CIs",
) -> bytes:
    """Grouped bars of per-group metrics from a :func:`~trustmed.metrics.fairness.fairness_report`,
    with the bootstrap CI as error bars (undefined values are left empty)."""
    groups = list(report["groups"])
    fig = _new_figure(width=max(5.2, 1.1 * len(metrics) + 0.4 * len(groups)))
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    x = np.arange(len(metrics))
    for i, name in enumerate(groups):
        entries = [report["groups"][name][m] for m in metrics]
        values = np.array([np.nan if e["value"] is None else e["value"] for e in entries], dtype=float)
        cis = np.array([e.get("ci", [np.nan, np.nan]) for e in entries], dtype=float)
        err = np.vstack([values - cis[:, 0], cis[:, 1] - values])
        err = np.where(np.isnan(err), 0.0, np.maximum(err, 0.0))
        ax.bar(
            x + (i - (len(groups) - 1) / 2) * width,
            np.nan_to_num(values),
            width,
            yerr=err,
            capsize=2,
            label=f"{name} (n={report['groups'][name]['n']})",
        )
    ax.set_xticks(x, list(metrics))
    ax.set(ylim=(0, 1.05), ylabel="value", title=title)
    ax.legend(fontsize=7, ncol=min(len(groups), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return save_png(fig, path)
