"""Real-data chains, end to end: train → audit → debias compare --quick → distill on schema-faithful
fixtures of CheXpert (with race), MIMIC-CXR-JPG (external split carved by patient), ISIC 2020 and
Fitzpatrick17k, from the shipped examples with ``--set data.root=…``.

The examples are written for real data (224 px, DenseNet121/ResNet, tens of epochs). To fit the CI
budget on 2 CPU cores the commands also get ``SCALE_DOWN``: a 32 px image size, one or two epochs,
small batches and few bootstrap replicates. The data, options, splits, architectures, attributes,
methods and grids are the examples' own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from trustmed.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures import real_formats  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()

SCALE_DOWN = {
    "train": ["--set", "data.image_size=32", "--set", "optim.epochs=2", "--set", "data.batch_size=16",
              "--set", "data.num_workers=0"],
    "debias": ["--set", "epochs=1", "--set", "n_boot=0"],
    "distill": ["--set", "train.epochs=1", "--set", "n_boot=0", "--set", "data.batch_size=16"],
}  # fmt: skip

CHAINS = {
    # name: (fixture, example stem, run folder, attribute the chain debiases)
    "chexpert": (real_formats.make_chexpert, "chexpert", "runs/chexpert", "sex"),
    "mimic_cxr": (real_formats.make_mimic_cxr, "mimic", "runs/mimic", "sex"),
    "isic2020": (real_formats.make_isic2020, "isic2020", "runs/isic2020", "sex"),
    "fitzpatrick17k": (real_formats.make_fitzpatrick17k, "fitzpatrick17k", "runs/fitz17k", "skin_tone"),
}


def _run(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"trustmed {' '.join(args)}\n{result.output}"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHAINS))
def test_train_audit_debias_distill_chain(name, tmp_path, monkeypatch):
    make, stem, run, attribute = CHAINS[name]
    root = make(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    _run(["train", "--config", str(EXAMPLES / f"train_{stem}.yaml"), "--set", f"data.root={root}",
          *SCALE_DOWN["train"], "--out", run, "--quiet"])  # fmt: skip
    spec = json.loads((tmp_path / run / "model.json").read_text())
    splits = pd.read_csv(tmp_path / run / "splits.csv", dtype=str)
    assert "external" in set(splits["split"])
    manifest = pd.read_csv(tmp_path / run / "predictions_test.csv", dtype={"patient_id": str})
    external = pd.read_csv(tmp_path / run / "predictions_external.csv", dtype={"patient_id": str})
    assert not set(external["patient_id"]) & set(manifest["patient_id"])  # never a patient of test
    if name == "chexpert":
        assert spec["spec"]["arch"] == "densenet121" and spec["spec"]["in_channels"] == 1
        assert "race" in manifest.columns  # the demographics file beside train.csv
    if name == "mimic_cxr":  # official split has no external: carved from training patients
        train = pd.read_csv(tmp_path / run / "predictions_train.csv", dtype={"patient_id": str})
        assert not set(external["patient_id"]) & set(train["patient_id"])

    _run(["audit", "--checkpoint", run, "--group-col", attribute, "--n-boot", "0", "--out", f"{run}_audit"])
    metrics = json.loads((tmp_path / f"{run}_audit" / "metrics.json").read_text())
    assert len([g for g in metrics["groups"] if g != "unknown"]) >= 2

    _run(["debias", "compare", "--config", str(EXAMPLES / f"debias_{stem}.yaml"), "--quick",
          "--set", f"attribute={attribute}", *SCALE_DOWN["debias"], "--out", f"{run}_debias"])  # fmt: skip
    table = pd.read_csv(tmp_path / f"{run}_debias" / "comparison.csv")
    assert {"erm", "swift"} <= set(table["method"])

    _run(["distill", "--config", str(EXAMPLES / f"distill_{stem}.yaml"), *SCALE_DOWN["distill"],
          "--out", f"{run}_distill"])  # fmt: skip
    student = json.loads((tmp_path / f"{run}_distill" / "metrics.json").read_text())
    assert any(key.startswith("acc_group:") for key in student["test"])
