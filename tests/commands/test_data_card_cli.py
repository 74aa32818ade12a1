"""``trustmed data card``: outputs, options through --set, and bad input → exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from trustmed.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_chexpert import FOLDER, write_chexpert  # noqa: E402


def test_card_from_csvs_only(tmp_path):
    write_chexpert(tmp_path / "data", n_patients=30, images=False)
    out = tmp_path / "card"
    sets = ["--set", "finding=Edema", "--set", "uncertainty=ignore", "--set", "split=patient"]
    root = ["--root", str(tmp_path / "data")]
    result = CliRunner().invoke(
        app, ["data", "card", "chexpert", *root, "--out", str(out), *sets, "--seed", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    raw = pd.concat([pd.read_csv(tmp_path / "data" / FOLDER / n) for n in ("train.csv", "valid.csv")])
    assert next(iter(card)) == "n_samples" and card["n_samples"] == int((raw["Edema"] != -1).sum())
    assert card["options"] == {"finding": "Edema", "uncertainty": "ignore", "split": "patient", "seed": 1}
    assert card["patients_in_several_splits"] == 0 and "-1" not in card["label_codes"]
    assert {"card.md", "card.json", "group_label_balance.png"} <= {p.name for p in out.iterdir()}


def test_card_bad_input_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "card", "chexpert", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "root not found" in result.output
    assert not (tmp_path / "o").exists()
    folder = write_chexpert(tmp_path / "data", images=False)
    pd.read_csv(folder / "valid.csv").drop(columns="Age").to_csv(folder / "valid.csv", index=False)
    result = runner.invoke(
        app, ["data", "card", "chexpert", "--root", str(folder), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "valid.csv: missing column(s) 'Age'" in result.output
    result = runner.invoke(app, ["data", "card", "chexpert", "--root", str(folder), "--set", "findng=Edema"])
    assert result.exit_code == 2 and "unknown option(s) findng" in result.output
    result = runner.invoke(app, ["data", "card", "nih_typo", "--root", str(folder)])
    assert result.exit_code == 2 and "unknown dataset" in result.output


def test_card_of_a_grounding_dataset_is_refused(tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["data", "card", "mscxr", "--root", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "'mscxr' is a grounding table" in result.output
    assert not out.exists()
    result = CliRunner().invoke(app, ["data", "card", "--root", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "give a dataset name" in result.output
