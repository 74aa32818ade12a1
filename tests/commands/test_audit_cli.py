"""``trustmed audit`` from the command line: outputs, options, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from trustmed.cli import app

runner = CliRunner()


def _predictions(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "y": rng.integers(0, 2, n),
            "tone": rng.choice(["light", "medium", "dark"], n),
            "sex": rng.choice(["F", "M"], n),
            "pid": rng.integers(0, n // 2, n),
        }
    )
    df["p"] = np.clip(0.35 * df["y"] + 0.6 * rng.random(n) - 0.1 * (df["tone"] == "dark"), 0, 1)
    return df


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "preds.csv"
    _predictions().to_csv(path, index=False)
    return path


def _audit(*args):
    return runner.invoke(app, ["audit", *map(str, args)])


def test_audit_writes_metrics_markdown_and_figures(tmp_path, csv):
    out = tmp_path / "out"
    result = _audit(
        "--predictions", csv, "--label-col", "y", "--score-col", "p", "--group-col", "tone",
        "--patient-col", "pid", "--n-boot", "200", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "eodds_max_gap" in result.stdout and "overall" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {
        "task",
        "attribute",
        "threshold",
        "n_boot",
        "min_group_size",
        "include_unknown",
        "overall",
        "groups",
        "gaps",
        "degenerate",
        "warnings",
    }
    assert metrics["degenerate"] is None and "warning:" not in result.stdout
    assert metrics["attribute"] == "tone" and metrics["n_boot"] == 200 and metrics["threshold"] == 0.5
    assert set(metrics["groups"]) == {"light", "medium", "dark"}
    assert len(metrics["gaps"]["eodds_max_gap"]["ci"]) == 2
    text = (out / "audit.md").read_text()
    assert "resampling whole patients" in text and "figures/roc_per_group.png" in text
    for name in ("roc_per_group", "calibration_per_group", "group_metrics"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_intersections_seed_and_config(tmp_path, csv):
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"predictions: {csv}\nlabel_col: y\nscore_col: p\ngroup_cols: [tone, sex]\nn_boot: 200\n"
    )
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _audit("--config", config, "--out", a, "--seed", "3", "--quiet").exit_code == 0
    assert _audit("--config", config, "--out", b, "--seed", "3", "--quiet").exit_code == 0
    assert (
        _audit("--config", config, "--out", c, "--set", "seed=4", "--set", "n_boot=300", "-q").exit_code == 0
    )
    ma, mb, mc = (json.loads((d / "metrics.json").read_text()) for d in (a, b, c))
    assert ma == mb and ma["attribute"] == "tone&sex" and "tone=dark&sex=F" in ma["groups"]
    assert mc["n_boot"] == 300 and mc["gaps"]["dp_gap"]["ci"] != ma["gaps"]["dp_gap"]["ci"]


def test_threshold_from_validation_predictions(tmp_path, csv):
    val = tmp_path / "val.csv"
    _predictions(seed=1).to_csv(val, index=False)
    out = tmp_path / "out"
    result = _audit(
        "--predictions", csv, "--val-predictions", val, "--threshold-method", "specificity",
        "--target-specificity", "0.9", "--label-col", "y", "--score-col", "p", "--group-col", "tone",
        "--n-boot", "0", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    v = _predictions(seed=1)
    spec = ((v["p"] < metrics["threshold"]) & (v["y"] == 0)).sum() / (v["y"] == 0).sum()
    assert spec >= 0.9 and metrics["threshold"] != 0.5
    assert "chosen on 240 validation predictions" in (out / "audit.md").read_text()
    assert "ci" not in metrics["gaps"]["dp_gap"]


def _bad_cases(tmp_path, csv):
    df = _predictions()
    cases = {}

    def write(name, frame=None, text=None):
        path = tmp_path / f"{name}.csv"
        if text is not None:
            path.write_text(text)
        else:
            frame.to_csv(path, index=False)
        return path

    common = ["--label-col", "y", "--score-col", "p", "--group-col", "tone"]
    cases["missing column"] = (
        ["--predictions", csv, "--label-col", "y", "--score-col", "prob", "--group-col", "tone"],
        ["column 'prob' not found", "available: y, tone, sex, pid, p"],
    )
    cases["missing group column"] = (
        ["--predictions", csv, "--label-col", "y", "--score-col", "p", "--group-col", "race"],
        ["column 'race' not found"],
    )
    cases["non-binary labels"] = (
        ["--predictions", write("labels", df.assign(y=df["y"] * 2)), *common],
        ["column 'y' must hold binary labels", "2"],
    )
    cases["nan scores"] = (
        ["--predictions", write("nan", df.assign(p=df["p"].where(df.index != 5))), *common],
        ["NaN score", "row 5"],
    )
    cases["scores out of range"] = (
        ["--predictions", write("range", df.assign(p=df["p"] * 3 - 1)), *common],
        ["must hold scores in [0, 1]"],
    )
    cases["one group"] = (
        ["--predictions", write("one", df.assign(tone="light")), *common],
        ["one group only", "'tone'"],
    )
    cases["one known group"] = (
        [
            "--predictions",
            write("one_known", df.assign(tone=np.where(df.index < 10, None, "light"))),
            *common,
        ],
        ["one group only ('light') besides 'unknown'"],
    )
    cases["empty file"] = (["--predictions", write("empty", text=""), *common], ["file is empty"])
    cases["header only"] = (["--predictions", write("header", text="y,p,tone\n"), *common], ["no rows"])
    cases["missing file"] = (["--predictions", tmp_path / "nope.csv", *common], ["not found", "nope.csv"])
    cases["length mismatch"] = (
        ["--predictions", write("ragged", text="y,p,tone\n1,0.5,a\n0,0.2\n1,0.9,b,7,8\n"), *common],
        ["not a readable CSV"],
    )
    cases["threshold and validation"] = (
        ["--predictions", csv, "--threshold", "0.3", "--val-predictions", csv, *common],
        ["either --threshold or --val-predictions"],
    )
    cases["bad threshold method"] = (
        ["--predictions", csv, "--val-predictions", csv, "--threshold-method", "mcc", *common],
        ["--threshold-method"],
    )
    cases["specificity without target"] = (
        ["--predictions", csv, "--val-predictions", csv, "--threshold-method", "specificity", *common],
        ["target_specificity"],
    )
    cases["unknown config key"] = (
        ["--predictions", csv, "--set", "nboot=3", *common],
        ["did you mean 'n_boot'"],
    )
    return cases


def test_bad_input_exit_2_one_line_and_no_output(tmp_path, csv):
    for name, (args, needles) in _bad_cases(tmp_path, csv).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        result = _audit(*args, "--n-boot", "200", "--out", out)
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)
        for needle in needles:
            assert needle in lines[0], (name, lines[0])
        assert not out.exists(), name
    assert not any(p.name.endswith(".staging") for p in tmp_path.iterdir())


def test_real_process_exit_code_and_stderr(tmp_path, csv):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "trustmed.cli", "audit", "--predictions", str(csv), "--label-col", "y",
         "--score-col", "nope", "--group-col", "tone", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {csv}: column 'nope' not found; available: y, tone, sex, pid, p"
    assert not out.exists()


def test_example_config_is_valid():
    from pathlib import Path

    from trustmed.audit import AuditConfig
    from trustmed.config import load_config

    example = Path(__file__).resolve().parents[2] / "examples" / "audit_predictions.yaml"
    cfg = load_config(AuditConfig, example)
    assert cfg.group_cols == ["skin_tone"] and cfg.val_predictions is not None and cfg.n_boot == 1000


def test_checkpoint_mode_calls_predictions_for_checkpoint(tmp_path, monkeypatch):
    import trustmed.train.classifier as classifier

    calls = []

    def fake(checkpoint_dir, *, dataset, root, split, options=None):
        calls.append((str(checkpoint_dir), dataset, str(root), split))
        frame = _predictions(seed=0 if split == "test" else 1).rename(columns={"y": "label", "p": "score"})
        return frame.assign(split=split)

    monkeypatch.setattr(classifier, "predictions_for_checkpoint", fake)
    out = tmp_path / "out"
    result = _audit(
        "--checkpoint", tmp_path / "ckpt", "--dataset", "synthskin", "--root", tmp_path / "data",
        "--val-split", "val", "--group-col", "tone", "--n-boot", "200", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [c[3] for c in calls] == ["test", "val"] and calls[0][1] == "synthskin"
    assert len(pd.read_csv(out / "predictions.csv")) == 240
    assert "validation predictions" in (out / "audit.md").read_text()
    missing = _audit("--checkpoint", tmp_path / "ckpt", "--group-col", "tone", "--out", tmp_path / "o2")
    assert missing.exit_code == 2 and "--dataset" in missing.stderr and not (tmp_path / "o2").exists()


def _with_unknown(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Known tones of similar quality, and rows of unknown tone (some missing) the model gets wrong."""
    df = _predictions(n, seed)
    rng = np.random.default_rng(seed + 10)
    unknown = rng.random(n) < 0.2
    df["tone"] = df["tone"].where(~unknown, "unknown").astype(object)
    df.loc[unknown & (rng.random(n) < 0.5), "tone"] = None  # half of them missing: read as unknown
    df.loc[unknown, "p"] = np.clip(0.9 - 0.7 * df.loc[unknown, "y"], 0, 1)  # the worst group
    return df


def test_unknown_rows_are_their_own_excluded_row_unless_include_unknown(tmp_path):
    df = _with_unknown()
    csv = tmp_path / "preds.csv"
    df.to_csv(csv, index=False)
    common = [
        "--predictions",
        csv,
        "--label-col",
        "y",
        "--score-col",
        "p",
        "--group-col",
        "tone",
        "--n-boot",
        "0",
    ]
    result = _audit(*common, "--out", tmp_path / "default")
    assert result.exit_code == 0, result.output
    n_missing = int(df["tone"].isna().sum())
    assert f"{n_missing} missing value(s) read as 'unknown'" in result.stdout
    assert "unknown (excluded)" in result.stdout
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert metrics["groups"]["unknown"]["excluded_from_gaps"] is True
    assert metrics["groups"]["unknown"]["n"] == int((df["tone"].isna() | (df["tone"] == "unknown")).sum())
    assert "| unknown (excluded) |" in (tmp_path / "default" / "audit.md").read_text()
    known = df[df["tone"].notna() & (df["tone"] != "unknown")]
    known_csv = tmp_path / "known.csv"
    known.to_csv(known_csv, index=False)
    assert _audit(*common[:1], known_csv, *common[2:], "--out", tmp_path / "known", "-q").exit_code == 0
    only_known = json.loads((tmp_path / "known" / "metrics.json").read_text())
    assert metrics["gaps"] == only_known["gaps"]
    # --include-unknown: the unknown group counts, and it is the worst
    result = _audit(*common, "--include-unknown", "--out", tmp_path / "counted", "-q")
    assert result.exit_code == 0, result.output
    counted = json.loads((tmp_path / "counted" / "metrics.json").read_text())
    assert counted["include_unknown"] is True and counted["groups"]["unknown"]["excluded_from_gaps"] is False
    assert counted["gaps"]["worst_group_auc"]["value"] == counted["groups"]["unknown"]["auc"]["value"]
    assert counted["gaps"]["auc_gap"]["value"] > metrics["gaps"]["auc_gap"]["value"] + 0.3


def test_constant_predictions_get_a_warning_line_everywhere(tmp_path, csv):
    df = _predictions().assign(p=0.1)
    constant = tmp_path / "constant.csv"
    df.to_csv(constant, index=False)
    out = tmp_path / "out"
    result = _audit(
        "--predictions", constant, "--label-col", "y", "--score-col", "p", "--group-col", "tone",
        "--n-boot", "0", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    reason = "constant predictions (all negative, balanced accuracy 0.500)"
    assert f"warning: {reason}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["degenerate"]["reason"] == reason and metrics["degenerate"]["selection_rate"] == 0.0
    text = (out / "audit.md").read_text()
    assert f"> **Warning:** {reason}" in text and "0.000 ⚠" in text
