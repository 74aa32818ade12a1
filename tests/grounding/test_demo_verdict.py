"""The grounding demo section's computed verdicts and conclusion, on hand-built numbers (no model run)."""

import math

import pytest

from trustmed.grounding.demo import (
    DEFAULT_TUNED,
    PRIOR,
    UNIFORM,
    ZERO_SHOT,
    compare,
    conclusion,
    grounding_verdicts,
    method_numbers,
)


def m(value, lo, hi):
    return {"value": value, "ci": [lo, hi]}


def row(miou, auroc=None, laterality=0.75):
    auroc = auroc or m(0.87, 0.83, 0.91)
    return {"miou": miou, "auroc": auroc, "pointing_game": m(0.3, 0.2, 0.4), "laterality": laterality}


def rows(tuned_miou, *, zero=None, uniform=None, prior=None, tuned_laterality=0.67):
    return {
        ZERO_SHOT: zero or row(m(0.065, 0.05, 0.08)),
        DEFAULT_TUNED: row(tuned_miou, laterality=tuned_laterality),
        UNIFORM: uniform or row(m(0.031, 0.02, 0.04), m(0.5, 0.5, 0.5), laterality=0.0),
        PRIOR: prior or row(m(0.224, 0.15, 0.29), laterality=0.5),
    }


def test_compare_levels():
    assert compare(m(0.3, 0.25, 0.35), m(0.1, 0.05, 0.15)) == "higher, CIs apart"
    assert compare(m(0.3, 0.15, 0.35), m(0.1, 0.05, 0.15)) == "higher, CIs overlap"  # touching CIs
    assert compare(m(0.3, 0.14, 0.35), m(0.1, 0.05, 0.15)) == "higher, CIs overlap"
    assert compare(m(0.3, math.nan, math.nan), m(0.1, 0.05, 0.15)) == "higher, CIs overlap"
    assert compare(m(0.1, 0.05, 0.15), m(0.1, 0.05, 0.15)) == "not higher"
    assert compare(m(0.05, 0.0, 0.1), m(0.1, 0.05, 0.15)) == "not higher"
    assert compare(m(math.nan, 0.0, 0.1), m(0.1, 0.05, 0.15)) == "not higher"


def test_prompt_tuning_helped():
    numbers = rows(m(0.12, 0.09, 0.15))
    v = grounding_verdicts(numbers)
    assert v["prompt_tuning_verdict"] == "helped" and v["prompt_tuning_helped"] is True
    text = conclusion(numbers)
    assert (
        "Prompt tuning (context vectors + output offsets) helped: mIoU 0.065 [0.050, 0.080] (zero-shot) → "
        "0.120 [0.090, 0.150], CIs apart." in text
    )


def test_prompt_tuning_higher_but_cis_overlap_is_not_shown_to_help():
    numbers = rows(m(0.08, 0.05, 0.10))
    v = grounding_verdicts(numbers)
    assert v["prompt_tuning_verdict"] == "higher, CIs overlap" and v["prompt_tuning_helped"] is False
    assert (
        "Prompt tuning (context vectors + output offsets) raised mIoU, but the 95 % CIs overlap, so the run "
        "does <b>not</b> show that it helps: mIoU 0.065 [0.050, 0.080] (zero-shot) → 0.080 [0.050, 0.100]."
        in conclusion(numbers)
    )


@pytest.mark.parametrize("tuned", [m(0.05, 0.03, 0.07), m(0.065, 0.05, 0.08)])  # lower; a tie
def test_prompt_tuning_not_higher_did_not_help(tuned):
    numbers = rows(tuned)
    v = grounding_verdicts(numbers)
    assert v["prompt_tuning_verdict"] == "not helped" and v["prompt_tuning_helped"] is False
    assert "Prompt tuning (context vectors + output offsets) did <b>not</b> help: mIoU 0.065" in conclusion(
        numbers
    )


def test_zero_shot_beats_chance_only_with_both_metrics_apart():
    numbers = rows(m(0.08, 0.05, 0.10))
    v = grounding_verdicts(numbers)
    assert v["zero_shot_vs_chance"] == "beats chance"
    assert v["zero_shot_vs_chance_by_metric"] == {"miou": "higher, CIs apart", "auroc": "higher, CIs apart"}
    assert conclusion(numbers).startswith(
        "Zero-shot LDM attention beats chance (the uniform map) with 95 % CIs apart: mIoU 0.065 [0.050, "
        "0.080] vs 0.031 [0.020, 0.040]; AUC-ROC 0.870 [0.830, 0.910] vs 0.500 [0.500, 0.500]."
    )
    # mIoU apart but AUC-ROC CIs overlapping: not shown
    overlap = rows(m(0.08, 0.05, 0.10), zero=row(m(0.065, 0.05, 0.08), m(0.55, 0.48, 0.62)))
    v = grounding_verdicts(overlap)
    assert v["zero_shot_vs_chance"] == "not shown to beat chance"
    assert v["zero_shot_vs_chance_by_metric"]["auroc"] == "higher, CIs overlap"
    assert conclusion(overlap).startswith(
        "Zero-shot LDM attention is <b>not</b> shown to beat chance (the uniform map): mIoU"
    )
    assert "(mIoU: higher, CIs apart, AUC-ROC: higher, CIs overlap)." in conclusion(overlap)
    # below the uniform map on mIoU
    below = rows(m(0.08, 0.05, 0.10), zero=row(m(0.02, 0.01, 0.03)))
    assert grounding_verdicts(below)["zero_shot_vs_chance_by_metric"]["miou"] == "not higher"
    assert grounding_verdicts(below)["zero_shot_vs_chance"] == "not shown to beat chance"


def test_zero_shot_below_the_class_location_prior_is_said_plainly():
    numbers = rows(m(0.08, 0.05, 0.10))
    v = grounding_verdicts(numbers)
    assert v["zero_shot_vs_prior_miou"] == "not higher" and v["zero_shot_beats_prior_miou"] is False
    assert (
        "Zero-shot attention is below the class-location prior on mIoU (0.065 vs 0.224), so it does "
        "<b>not</b> beat it: the map knows the finding type's usual place less well than a per-class "
        "average mask." in conclusion(numbers)
    )
    level = rows(m(0.08, 0.05, 0.10), prior=row(m(0.065, 0.05, 0.08)))
    assert "Zero-shot attention is level with the class-location prior on mIoU (0.065 vs 0.065)" in (
        conclusion(level)
    )


def test_zero_shot_above_the_class_location_prior():
    apart = rows(m(0.08, 0.05, 0.10), prior=row(m(0.03, 0.02, 0.04)))
    assert grounding_verdicts(apart)["zero_shot_beats_prior_miou"] is True
    assert "Zero-shot attention beats the class-location prior on mIoU (0.065 [0.050, 0.080] vs 0.030" in (
        conclusion(apart)
    )
    close = rows(m(0.08, 0.05, 0.10), prior=row(m(0.06, 0.04, 0.07)))
    v = grounding_verdicts(close)
    assert v["zero_shot_vs_prior_miou"] == "higher, CIs overlap" and v["zero_shot_beats_prior_miou"] is False
    assert "so the run does <b>not</b> show that it beats the prior" in conclusion(close)


def test_laterality_above_half_or_not():
    numbers = rows(m(0.08, 0.05, 0.10), tuned_laterality=0.5)
    v = grounding_verdicts(numbers)
    assert v["laterality_above_chance"] == {ZERO_SHOT: True, DEFAULT_TUNED: False}
    assert conclusion(numbers).endswith(
        "Laterality (0.5 = ignores left/right): zero-shot 0.75 (above 0.5), prompt-tuned 0.50 (<b>not</b> "
        "above 0.5: it does not read the side)."
    )
    missing = rows(m(0.08, 0.05, 0.10), tuned_laterality=None)
    assert grounding_verdicts(missing)["laterality_above_chance"][DEFAULT_TUNED] is None
    assert "prompt-tuned not measured (no same-finding-both-sides pairs)." in conclusion(missing)


def test_method_numbers_reads_the_evaluate_maps_summary():
    summary = {
        "overall": {
            "miou": {"value": 0.1, "ci": [0.05, 0.15]},
            "auroc": {"value": 0.8, "ci": None},
            "pointing_game": {"value": 0.3, "ci": [0.2, 0.4]},
        },
        "laterality_accuracy": None,
    }
    out = method_numbers(summary)
    assert out["miou"] == {"value": 0.1, "ci": [0.05, 0.15]} and out["laterality"] is None
    assert all(math.isnan(x) for x in out["auroc"]["ci"])
    assert method_numbers({**summary, "laterality_accuracy": 0.75})["laterality"] == 0.75
