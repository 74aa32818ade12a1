"""NIH ChestX-ray14 loader on a fixture in the official Data_Entry_2017 schema."""

from __future__ import annotations

import numpy as np
import pytest

from trustmed.data import load_dataset
from trustmed.data.card import build_card
from trustmed.errors import InputError

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def _write(root, n_patients=40, with_lists=True):
    rng = np.random.default_rng(0)
    rows, names = [HEADER], []
    findings = ["No Finding", "Effusion", "Cardiomegaly|Effusion", "Nodule", "Atelectasis|Infiltration"]
    for pid in range(1, n_patients + 1):
        for follow in range(int(rng.integers(1, 4))):
            name = f"{pid:08d}_{follow:03d}.png"
            names.append(name)
            age = 414 if pid == 3 else int(rng.integers(20, 90))  # the release has a few impossible ages
            label = findings[(pid + follow) % len(findings)]
            sex, view = "MF"[pid % 2], "PA" if pid % 3 else "AP"
            rows.append(f"{name},{label},{follow},{pid},{age},{sex},{view},2500,2048,0.143,0.143,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    if with_lists:
        test_patients = {f"{p:08d}" for p in range(1, n_patients + 1, 5)}
        test = [n for n in names if n[:8] in test_patients]
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    return names


def test_labels_attributes_and_official_split(tmp_path):
    names = _write(tmp_path)
    df = load_dataset("nih", tmp_path)
    assert len(df) == len(names)
    effusion = df["findings"].str.split("|").map(lambda f: "Effusion" in f)
    assert (df["label"] == effusion.astype(int)).all()  # "|"-separated, not a substring match
    assert set(df["sex"]) == {"male", "female"}
    assert df.loc[df["patient_id"] == "3", "age_bin"].eq("unknown").all()
    test_ids = set((tmp_path / "test_list.txt").read_text().split())
    assert set(df.loc[df["split"] == "test", "sample_id"]) == test_ids
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.groupby("patient_id")["split"].nunique().max() == 1


def test_patient_split_without_lists_and_any_finding(tmp_path):
    _write(tmp_path, with_lists=False)
    df = load_dataset("nih", tmp_path, finding="any", view="PA")
    assert (df["label"] == (df["findings"] != "No Finding").astype(int)).all()
    assert (df["view"] == "PA").all()
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert {"train", "val", "test"} <= set(df["split"])


def test_card_metadata_only(tmp_path):
    _write(tmp_path)
    card = build_card(load_dataset("nih", tmp_path), name="nih")
    assert card["n_samples"] > 0


def test_bad_input(tmp_path):
    with pytest.raises(InputError, match="Data_Entry_2017"):
        load_dataset("nih", tmp_path)
    _write(tmp_path)
    text = (tmp_path / "Data_Entry_2017.csv").read_text().replace("Patient Gender", "Gender")
    (tmp_path / "Data_Entry_2017.csv").write_text(text)
    with pytest.raises(InputError, match=r"Data_Entry_2017.csv: missing column\(s\) 'Patient Gender'"):
        load_dataset("nih", tmp_path)
    with pytest.raises(InputError, match="finding"):
        load_dataset("nih", tmp_path, finding="Effusionn")
