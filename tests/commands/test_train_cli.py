"""``trustmed train`` and ``trustmed data synth skin`` from the command line."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from trustmed.cli import app

runner = CliRunner()
SMALL = [
    "--set",
    "image_size=16",
    "--set",
    "n_train=120",
    "--set",
    "n_val=40",
    "--set",
    "n_external=8",
    "--set",
    "n_test=24",
    "--set",
    "n_ood=0",
]


def test_synth_then_train(tmp_path):
    data = tmp_path / "synthskin"
    result = runner.invoke(app, ["data", "synth", "skin", "--out", str(data), "--seed", "1", *SMALL])
    assert result.exit_code == 0, result.output
    assert json.loads((data / "synthskin.json").read_text())["seed"] == 1
    assert len(pd.read_csv(data / "fitzpatrick17k.csv")) == 192
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--quiet",
        "--set",
        f"data.root={data}",
        "--set",
        "data.image_size=16",
        "--set",
        "model.width=4",
        "--set",
        "optim.epochs=2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "predictions_test.csv").is_file()
    # only the lock file stays beside --out: no staging folder, no temporary file
    assert [p.name for p in tmp_path.glob(".run.*")] == [".run.lock"]
    result = runner.invoke(app, [a for a in args if a != "--quiet"] + ["--resume"])
    assert result.exit_code == 0, result.output
    assert "val AUC" in result.output and "at epoch" in result.output


def test_bad_input_exit_2_no_output(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--set", f"data.root={tmp_path / 'missing'}"])
    assert result.exit_code == 2
    assert "error: Fitzpatrick17k root not found" in result.output
    assert not out.exists()
    result = runner.invoke(app, ["train", "--out", str(out), "--set", "optim.epoch=3"])
    assert result.exit_code == 2 and "did you mean 'optim.epochs'" in result.output
    result = runner.invoke(
        app, ["data", "synth", "skin", "--out", str(tmp_path / "s"), "--set", "n_train=-1"]
    )
    assert result.exit_code == 2 and "n_train" in result.output and not (tmp_path / "s").exists()
