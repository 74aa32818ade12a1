"""`trustmed audit --checkpoint … --dataset … --root …` on a really trained model: the same numbers as
auditing the predictions CSV that training wrote, and the OOD split audited with the same command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.config import load_config
from trustmed.data.synth.skin import generate_synthskin
from trustmed.train.classifier import TrainConfig, train_classifier

runner = CliRunner()
SIZES = {"image_size": 16, "n_train": 96, "n_val": 32, "n_external": 8, "n_test": 48, "n_ood": 32}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = generate_synthskin(tmp_path_factory.mktemp("skin"), seed=2, **SIZES)
    out = tmp_path_factory.mktemp("run")
    sets = [f"data.root={root}", "data.image_size=16", "model.width=4", "optim.epochs=1"]
    train_classifier(load_config(TrainConfig, None, sets), out)
    return root, out


def _audit(args, out):
    result = runner.invoke(
        app, ["audit", *args, "--group-col", "skin_tone", "--n-boot", "200", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_checkpoint_audit_matches_csv_audit(trained, tmp_path):
    root, run = trained
    from_ckpt = _audit(
        ["--checkpoint", str(run), "--dataset", "synthskin", "--root", str(root), "--split", "test"],
        tmp_path / "a",
    )
    from_csv = _audit(
        ["--predictions", str(run / "predictions_test.csv"), "--label-col", "label", "--score-col", "score"],
        tmp_path / "b",
    )
    for group in ("dark", "light"):
        assert from_ckpt["groups"][group]["auc"]["value"] == pytest.approx(
            from_csv["groups"][group]["auc"]["value"], abs=1e-6
        )
    assert from_ckpt["gaps"]["eodds_mean_gap"]["value"] == pytest.approx(
        from_csv["gaps"]["eodds_mean_gap"]["value"], abs=1e-6
    )


def test_checkpoint_audit_on_ood_split(trained, tmp_path):
    root, run = trained
    metrics = _audit(
        ["--checkpoint", str(run), "--dataset", "synthskin", "--root", str(root), "--split", "ood"],
        tmp_path / "o",
    )
    assert sum(g["n"] for g in metrics["groups"].values()) == SIZES["n_ood"]
