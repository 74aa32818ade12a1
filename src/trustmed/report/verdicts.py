"""One run's comparison of two numbers with their 95 % CIs, as the demo's conclusions word it.

Every demo section that says whether a method helped reads :func:`ci_verdict`: better with the CIs
apart, better with the CIs overlapping (the run does not show it helps), or not better. A missing
or non-finite CI (e.g. ``n_boot: 0``) can never show a difference, so it counts as overlapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["Verdict", "ci_verdict"]

Verdict = Literal["better, CIs apart", "better, CIs overlap", "not better"]


def ci_verdict(
    a: float,
    a_ci: Sequence[float] | None,
    b: float,
    b_ci: Sequence[float] | None,
    *,
    better: Literal["higher", "lower"] = "higher",
) -> Verdict:
    """``a`` (95 % CI ``a_ci``) against ``b`` (``b_ci``); ``better`` says which direction wins.

    >>> ci_verdict(0.9, [0.86, 0.94], 0.7, [0.65, 0.75])
    'better, CIs apart'
    >>> ci_verdict(0.72, [0.67, 0.77], 0.70, [0.65, 0.75])
    'better, CIs overlap'
    >>> ci_verdict(0.05, [0.02, 0.08], 0.30, [0.25, 0.35], better="lower")
    'better, CIs apart'
    >>> ci_verdict(0.9, None, 0.7, [0.65, 0.75])  # no CI: nothing is shown
    'better, CIs overlap'
    >>> ci_verdict(0.7, [0.65, 0.75], 0.7, [0.65, 0.75])
    'not better'
    """
    sign = 1.0 if better == "higher" else -1.0
    if not sign * a > sign * b:  # NaN is not better either
        return "not better"
    bounds = [*(a_ci or (math.nan, math.nan)), *(b_ci or (math.nan, math.nan))]
    if len(bounds) != 4 or not all(math.isfinite(float(v)) for v in bounds):
        return "better, CIs overlap"
    a_lo, a_hi, b_lo, b_hi = (float(v) for v in bounds)
    apart = a_lo > b_hi if better == "higher" else a_hi < b_lo
    return "better, CIs apart" if apart else "better, CIs overlap"
