"""Group robustness metrics with stratified bootstrap confidence intervals.

Keys follow WILDS (Koh et al., "WILDS: A Benchmark of in-the-Wild Distribution Shifts", ICML 2021,
arXiv 2012.07421): ``acc_avg`` (accuracy over all samples), ``acc_group:<name>`` and
``count_group:<name>`` for every group, and ``acc_wg`` (worst-group accuracy), the quantity that
Group DRO (Sagawa et al., arXiv 1911.08731) and GroupDistil (Vilouras et al., arXiv 2311.00476) optimise.

Confidence intervals are percentile bootstrap intervals (METRICS.md) drawn by
:mod:`trustmed.metrics.bootstrap`: each replicate resamples every group with replacement at its own
size (stratified), optionally whole patients at a time, and recomputes every number (``acc_wg``
included) from the same resample, all replicates in one matrix product over the weights.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 1, 1]); pred = np.array([0, 1, 1, 1, 1, 0])
>>> m = robustness_metrics(y, pred, groups=np.array(["a", "a", "b", "b", "b", "b"]), n_boot=0)
>>> m["acc_avg"]["value"], m["acc_group:a"]["value"], m["count_group:b"], m["acc_wg"]["value"]
(0.6666666666666666, 0.5, 4, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trustmed.errors import InputError
from trustmed.metrics.bootstrap import Bootstrap, check_ci, check_n_boot, percentile_ci

__all__ = ["robustness_metrics"]


def robustness_metrics(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    *,
    groups: Sequence | np.ndarray,
    patient_ids: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    ci: tuple[float, float] = (0.025, 0.975),
    seed: int = 0,
) -> dict[str, Any]:
    """WILDS-style accuracy metrics per group, with bootstrap CIs.

    Parameters
    ----------
    y_true, y_pred : true and predicted class labels, shape ``(n,)``.
    groups : group name of every sample (e.g. ``"y=1&place=0"``).
    patient_ids : optional; resample whole patients within each group.
    n_boot : bootstrap replicates (0: no CIs).
    ci : lower and upper percentiles as fractions.
    seed : seed of the resampling.

    Returns
    -------
    dict with ``acc_avg``, ``acc_group:<name>``, ``acc_wg`` as ``{"value": v, "ci": [lo, hi]}`` (no
    ``ci`` when ``n_boot == 0``), ``count_group:<name>`` as ints, ``worst_group`` (its name) and ``n_boot``.
    """
    n_boot, ci = check_n_boot(n_boot), check_ci(ci)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    groups = np.asarray(groups).astype(str)
    if not (len(y_true) == len(y_pred) == len(groups)):
        raise InputError(
            f"y_true, y_pred and groups must have the same length, got {len(y_true)}, {len(y_pred)}, "
            f"{len(groups)}"
        )
    if len(y_true) == 0:
        raise InputError("no samples to compute robustness metrics on")
    names = list(np.unique(groups))
    correct = (y_true == y_pred).astype(np.float64)
    member = np.stack([groups == name for name in names]).astype(np.float64)  # (G, n)
    counts = member.sum(axis=1)

    def summarise(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Average and per-group accuracy for weight rows ``w`` of shape ``(r, n)``."""
        group_acc = (w * correct) @ member.T / (w @ member.T)
        avg = (w @ correct) / w.sum(axis=1)
        return avg, group_acc

    avg, group_acc = summarise(np.ones((1, len(correct))))
    values = {"acc_avg": avg[0], "acc_wg": group_acc[0].min()}
    values.update({f"acc_group:{name}": group_acc[0, i] for i, name in enumerate(names)})
    result: dict[str, Any] = {key: {"value": float(v)} for key, v in values.items()}
    if n_boot > 0:
        clusters = None if patient_ids is None else np.asarray(patient_ids).astype(str)
        resample = Bootstrap(len(groups), strata=groups, clusters=clusters, seed=seed)
        parts = [summarise(w) for w in resample.chunks(n_boot)]
        b_avg, b_group = np.concatenate([a for a, _ in parts]), np.concatenate([g for _, g in parts])
        boot = {"acc_avg": b_avg, "acc_wg": b_group.min(axis=1)}
        boot.update({f"acc_group:{name}": b_group[:, i] for i, name in enumerate(names)})
        for key, samples in boot.items():
            result[key]["ci"] = percentile_ci(samples, ci)
    for i, name in enumerate(names):
        result[f"count_group:{name}"] = int(counts[i])
    result["worst_group"] = names[int(np.argmin(group_acc[0]))]
    result["n_boot"] = int(n_boot)
    return result
