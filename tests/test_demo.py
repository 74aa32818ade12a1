"""The demo's foundation part end to end on a tiny SynthSkin, and the wiring of every later section."""

import importlib
import inspect
import json

import pytest
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.demo import SECTION_MODULES

TINY = [
    "sections=[audit]",
    "n_boot=200",
    "attributes=[skin_tone]",
    "synthskin.n_train=160",
    "synthskin.n_val=80",
    "synthskin.n_external=40",
    "synthskin.n_test=80",
    "synthskin.n_ood=0",
    "train.optim.epochs=1",
    "train.data.augment=false",
]


def test_demo_foundation_writes_report(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--seed", "3", "--quiet"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = out / "report.html"
    assert str(report.resolve()) in result.output.replace("\n", "")
    text = report.read_text()
    assert "data:image/png;base64," in text  # figures are embedded
    assert "eodds_mean_gap" in text
    metrics = json.loads((out / "audit" / "skin_tone" / "metrics.json").read_text())
    assert set(metrics["groups"]) == {"dark", "light"}
    assert metrics["n_boot"] == 200
    assert (out / "train" / "model.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    erm = results["erm"]
    assert erm["test_auc"] == pytest.approx(metrics["overall"]["auc"]["value"])
    assert erm["eodds_mean_gap"]["value"] == pytest.approx(metrics["gaps"]["eodds_mean_gap"]["value"])
    assert set(erm["test_tpr_by_group"]) == {"dark", "light"} and erm["epochs"] == 1
    assert results["seed"] == 3 and results["torch_threads"] >= 1 and results["sections"] == {}
    assert f"On the test split the ERM classifier has AUC {erm['test_auc']:.3f}." in text


def test_every_section_module_provides_demo_section():
    for name, module_name in SECTION_MODULES.items():
        func = importlib.import_module(module_name).demo_section
        params = inspect.signature(func).parameters
        assert {"seed", "quick"} <= set(params), name


@pytest.mark.slow
def test_grounding_section_shows_prompt_tuning_reading_the_location(tmp_path):
    import pandas as pd

    from trustmed.grounding.demo import demo_section

    section = demo_section(tmp_path, seed=0, quick=True)
    table = pd.read_csv(tmp_path / "grounding_table.csv").set_index("method")
    assert "prompt-tuned + LoRA" in section.body and (tmp_path / "grounding_cases.png").is_file()
    zero, ctx = table.loc["zero-shot LDM attention"], table.loc["prompt-tuned (context vectors, kl)"]
    out, lora = table.loc["prompt-tuned (context vectors + output offsets)"], table.loc["prompt-tuned + LoRA"]
    # the output offsets (the default) sharpen the maps: mIoU and the pointing game rise
    assert out.miou > 1.15 * zero.miou and out.pointing_game > zero.pointing_game
    # the kl context vectors sharpen the ranking and read the side; LoRA (soft-IoU loss) lifts mIoU
    assert ctx.auroc > zero.auroc + 0.03 and ctx.laterality > zero.laterality
    assert lora.miou > 1.3 * zero.miou and lora.laterality > zero.laterality
    # the section opens with its computed conclusion and saves it with the numbers it reads
    assert section.body.startswith('<p class="note"><b>Result:</b> Zero-shot LDM attention')
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["methods"]["zero-shot LDM attention"]["miou"]["value"] == pytest.approx(zero.miou)
    assert saved["prompt_tuning_verdict"] in ("helped", "higher, CIs overlap", "not helped")
    assert saved["conclusion"].startswith("Zero-shot LDM attention") and "<b>" not in saved["conclusion"]


def test_debias_section_marks_flagged_results(tmp_path, monkeypatch):
    import numpy as np

    import trustmed.debias.demo as demo
    from trustmed.debias.selection import Comparison, MethodResult
    from trustmed.debias.tables import COST_KEYS
    from trustmed.metrics.fairness import fairness_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    groups = rng.choice(["light", "dark"], 200)
    healthy = np.clip(0.4 * y + 0.6 * rng.random(200), 0, 1)

    def result(name, scores):
        res = MethodResult(name, {}, False, True, [], dict.fromkeys(COST_KEYS, 0), 0.0, 0.5)
        report = fairness_report(y, scores, groups=groups, n_boot=0, attribute="skin_tone")
        res.metrics = {"test": {"0.5": report, "tuned": report}}
        return res

    comparison = Comparison(
        "skin_tone",
        {"erm": result("erm", healthy), "swift": result("swift", np.full(200, 0.2))},
        {"auc": 0.8, "balanced_accuracy": 0.7},
        {"select_gap": "eodds_mean_gap", "eval_splits": ["test"], "sizes": {"external": 24}},
    )
    monkeypatch.setattr(demo, "_prepare", lambda out, *a: (out / "erm", out / "data"))
    monkeypatch.setattr(demo, "compare_checkpoint", lambda cfg: comparison)
    body = demo.demo_section(tmp_path, seed=0, quick=True).body
    reason = "constant predictions (all negative, balanced accuracy 0.500)"
    assert "0.000 [nan, nan] ⚠ constant" in body and f"⚠ swift: {reason}" in body
    assert f"(flagged: {reason}, so this gap is no evidence of fairness)" in body
    assert "⚠ erm" not in body
    # a flagged SWiFT has a zero gap, yet the section opens by saying it did not help
    assert body.startswith('<p class="note"><b>Result:</b> SWiFT did <b>not</b> help in this run')
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["swift_cuts_gap"] is False and saved["threshold_0.5"]["swift"]["gap"] == 0.0
    assert saved["conclusion"].startswith("SWiFT did not help in this run: its result is flagged")


def _method(gap, auc=0.85, flag="", needs_attribute=False, half=0.03):
    return {
        "gap": gap,
        "gap_ci": [gap - half, gap + half],
        "auc": auc,
        "auc_ci": [auc - 0.02, auc + 0.02],
        "flag": flag,
        "needs_attribute": needs_attribute,
    }


def test_debias_conclusion_says_plainly_when_swift_does_not_cut_the_gap():
    from trustmed.debias.demo import conclusion, swift_cuts_gap

    base = {
        "finetune": _method(0.12),
        "group_thresholds": _method(0.01, needs_attribute=True),
        "swift_nomask": {**_method(0.02), "ablation": True},
    }
    worse = {"erm": _method(0.20), "swift": _method(0.22), **base}
    text = conclusion(worse)
    assert text.startswith("SWiFT did <b>not</b> cut ERM's gap in this run: equalised-odds gap 0.200 → 0.220")
    assert not swift_cuts_gap(worse)
    equal = {"erm": _method(0.20), "swift": _method(0.20), **base}
    assert conclusion(equal).startswith("SWiFT did <b>not</b> cut") and not swift_cuts_gap(equal)
    flagged = {"erm": _method(0.20), "swift": _method(0.0, flag="constant predictions"), **base}
    assert conclusion(flagged).startswith("SWiFT did <b>not</b> help in this run: its result is flagged")
    assert not swift_cuts_gap(flagged)
    # the baselines leave out methods needing the attribute (group_thresholds) and SWiFT's ablations
    assert "the lowest gap is finetune's 0.120 (AUC 0.850): SWiFT's gap is not lower than it." in text


def test_debias_conclusion_reports_the_cut_and_whether_the_cis_overlap():
    from trustmed.debias.demo import conclusion, swift_cuts_gap, swift_verdict

    numbers = {"erm": _method(0.25, auc=0.88), "swift": _method(0.05, auc=0.86), "finetune": _method(0.12)}
    text = conclusion(numbers)
    assert swift_cuts_gap(numbers) and "<b>not</b>" not in text
    assert text.startswith(
        "SWiFT cut ERM's equalised-odds gap in this run from 0.250 to 0.050 (by 0.200, 80%"
    )
    assert "AUC 0.880 → 0.860" in text and "overlap" not in text
    assert "SWiFT's gap is lower than it." in text
    close = {"erm": _method(0.10), "swift": _method(0.08), "finetune": _method(0.05, flag="failed guard")}
    text = conclusion(close)
    assert swift_cuts_gap(close) and "though the two 95 % CIs overlap" in text
    assert "Every baseline that needs no skin tone at prediction time is flagged." in text
    assert swift_verdict(close) == "cut, CIs overlap" and swift_verdict(numbers) == "cut"


def test_distill_verdict_says_plainly_when_groupdistil_does_not_help():
    from types import SimpleNamespace

    from trustmed.distill.demo import conclusion, verdict, verdict_level

    assert verdict_level(0.70, [0.65, 0.75], 0.72, [0.67, 0.77]) == "not helped"
    assert verdict_level(0.72, [0.67, 0.77], 0.70, [0.65, 0.75]) == "higher, CIs overlap"
    assert verdict_level(0.90, [0.86, 0.94], 0.70, [0.65, 0.75]) == "helped"
    not_helped = "GroupDistil did <b>not</b> help over group-uniform KD in this run"
    assert verdict(0.70, [0.65, 0.75], 0.72, [0.67, 0.77]) == not_helped
    assert verdict(0.70, [0.65, 0.75], 0.70, [0.65, 0.75]) == not_helped  # a tie is no help
    assert "CIs overlap, so the run does not show that it helps" in verdict(
        0.72, [0.67, 0.77], 0.70, [0.65, 0.75]
    )
    assert (
        verdict(0.90, [0.86, 0.94], 0.70, [0.65, 0.75])
        == "GroupDistil helped over group-uniform KD in this run"
    )

    def run(wg, half=0.05):
        return SimpleNamespace(metrics={"test": {"acc_wg": {"value": wg, "ci": [wg - half, wg + half]}}})

    text = conclusion({"gd": run(0.60), "kd": run(0.71), "ks": run(0.50)}, gd="gd", kd="kd", kd_sample="ks")
    assert text.startswith(not_helped)
    assert (
        "0.600 vs group-uniform KD's 0.710 (lower by 0.110) and per-sample KD's 0.500 (higher by 0.100)"
        in text
    )
