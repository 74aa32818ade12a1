"""The demo sections' helped / not shown / did not help verdicts share one rule (``ci_verdict``)."""

from __future__ import annotations

import math

import pytest

from trustmed.report.verdicts import ci_verdict

NAN = [math.nan, math.nan]


@pytest.mark.parametrize(
    ("a", "a_ci", "b", "b_ci", "better", "expected"),
    [
        (0.90, [0.86, 0.94], 0.70, [0.65, 0.75], "higher", "better, CIs apart"),
        (0.72, [0.67, 0.77], 0.70, [0.65, 0.75], "higher", "better, CIs overlap"),
        (0.70, [0.65, 0.75], 0.72, [0.67, 0.77], "higher", "not better"),
        (0.05, [0.02, 0.08], 0.30, [0.25, 0.35], "lower", "better, CIs apart"),
        (0.08, [0.04, 0.12], 0.10, [0.06, 0.14], "lower", "better, CIs overlap"),
        (0.30, [0.25, 0.35], 0.05, [0.02, 0.08], "lower", "not better"),
        (0.90, NAN, 0.70, [0.65, 0.75], "higher", "better, CIs overlap"),  # no CI shows nothing
        (math.nan, [0.8, 0.9], 0.70, [0.65, 0.75], "higher", "not better"),
    ],
)
def test_ci_verdict(a, a_ci, b, b_ci, better, expected):
    assert ci_verdict(a, a_ci, b, b_ci, better=better) == expected


def test_every_demo_section_reads_a_missing_ci_as_not_shown():
    from trustmed.debias.demo import swift_verdict
    from trustmed.distill.demo import verdict_level
    from trustmed.grounding.demo import compare

    erm = {"gap": 0.30, "gap_ci": NAN, "flag": ""}
    swift = {"gap": 0.05, "gap_ci": NAN, "flag": ""}
    assert swift_verdict({"erm": erm, "swift": swift}) == "cut, CIs overlap"
    assert verdict_level(0.9, NAN, 0.7, NAN) == "higher, CIs overlap"
    assert compare({"value": 0.3, "ci": NAN}, {"value": 0.1, "ci": NAN}) == "higher, CIs overlap"
