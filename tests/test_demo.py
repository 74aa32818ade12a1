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
