"""The audit API: run_audit on a DataFrame, its outputs, and its input checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trustmed.audit import AuditResult, run_audit
from trustmed.errors import InputError
from trustmed.metrics.fairness import fairness_report
from trustmed.report import render_report


def _frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "label": rng.integers(0, 2, n),
            "skin": rng.choice(["light", "dark"], n),
            "age": rng.choice(["young", "old"], n),
            "patient": rng.integers(0, n // 3, n),
        }
    )
    df["score"] = np.clip(0.4 * df["label"] + 0.6 * rng.random(n) - 0.15 * (df["skin"] == "dark"), 0, 1)
    return df


def test_run_audit_matches_fairness_report_and_writes_outputs(tmp_path):
    df = _frame()
    result = run_audit(df, group_cols=["skin"], patient_col="patient", n_boot=80, seed=2, out_dir=tmp_path)
    expected = fairness_report(
        df["label"], df["score"], groups=df[["skin"]], patient_ids=df["patient"], n_boot=80, seed=2
    )
    assert result.metrics == expected
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["groups"]["dark"]["n"]
        == (df.skin == "dark").sum()
    )
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "calibration_per_group.png",
        "group_metrics.png",
        "roc_per_group.png",
    ]
    assert set(result.paths) == {"metrics", "audit", "roc", "calibration", "group_metrics"}
    md = (tmp_path / "audit.md").read_text()
    assert "| dark |" in md and "eodds_max_gap" in md and "resampling whole patients" in md


def test_section_embeds_tables_and_figures():
    result = run_audit(_frame(), group_cols=["skin", "age"], n_boot=30)
    section = result.section()
    html = render_report("r", [section])
    assert html.count("data:image/png;base64,") == 3
    assert "skin=dark&amp;age=old" in html and "eodds_max_gap" in html
    assert "equalised-odds gap" in section.body


def test_rich_tables_list_groups_and_gaps():
    from rich.console import Console

    result = run_audit(_frame(), group_cols=["skin"], n_boot=30, figures=False)
    console = Console(record=True, width=200)
    for table in result.rich_tables():
        console.print(table)
    text = console.export_text()
    assert "overall" in text and "dark" in text and "worst_group_auc" in text
    assert AuditResult.format_entry({"value": float("nan"), "ci": [float("nan")] * 2}) == "—"
    assert AuditResult.format_entry({"value": 0.5, "ci": [0.25, 0.75]}) == "0.500 [0.250, 0.750]"


def test_threshold_chosen_on_validation_only():
    test, val = _frame(seed=0), _frame(seed=1)
    result = run_audit(test, group_cols=["skin"], val_predictions=val, threshold_method="youden", n_boot=0)
    from trustmed.metrics.fairness import choose_threshold

    assert result.metrics["threshold"] == choose_threshold(val["label"], val["score"], method="youden")
    assert "validation" in result.threshold_source
    with pytest.raises(InputError, match="not both"):
        run_audit(test, group_cols=["skin"], val_predictions=val, threshold=0.4)


def test_undefined_group_metrics_are_explained_in_the_summary():
    df = _frame()
    df.loc[df.skin == "dark", "label"] = 0
    result = run_audit(df, group_cols=["skin"], n_boot=20, figures=False)
    md = result.markdown()
    assert "group 'dark': no positives" in md and "| dark |" in md and "—" in md
    assert np.isnan(result.metrics["groups"]["dark"]["tpr"]["value"])


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (lambda d: d.iloc[:0], {}, "empty"),
        (
            lambda d: d,
            {"score_col": "prob"},
            "column 'prob' not found; available: label, skin, age, patient, score",
        ),
        (lambda d: d, {"group_cols": []}, "no group column"),
        (lambda d: d, {"patient_col": "pid"}, "column 'pid' not found"),
        (lambda d: d.assign(label=d.label.astype(str).replace("1", "yes")), {}, "binary labels"),
        (lambda d: d.assign(score=d.score.where(d.index != 3)), {}, "NaN score"),
        (lambda d: d.assign(score=d.score + 1), {}, r"scores in \[0, 1\]"),
        (lambda d: d.assign(skin="light"), {}, "one group only"),
        (
            lambda d: d.assign(skin=d.skin.where(d.index < 5, "light").where(d.index >= 5)),
            {},
            "one group only \\('light'\\) besides 'unknown'",
        ),
        (lambda d: d.assign(skin="light", age="old"), {"group_cols": ["skin", "age"]}, "only one group"),
    ],
)
def test_bad_input(change, kwargs, message):
    args = {"group_cols": ["skin"], "n_boot": 10, "figures": False, "source": "preds.csv"} | kwargs
    with pytest.raises(InputError, match=message):
        run_audit(change(_frame()), **args)


def test_nothing_written_when_input_is_bad(tmp_path):
    with pytest.raises(InputError):
        run_audit(_frame().assign(score=2.0), group_cols=["skin"], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
