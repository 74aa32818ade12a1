"""CheXpert loader on a fixture in the official train.csv / valid.csv schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trustmed.data import load_dataset
from trustmed.data.chexpert import CSV_COLUMNS, FINDINGS
from trustmed.data.manifest import check_images
from trustmed.errors import InputError

FOLDER = "CheXpert-v1.0-small"


def write_chexpert(base, n_patients=6, images=True, seed=0):
    """train.csv + valid.csv exactly as published (header, codes, blanks, path prefix) under base/FOLDER."""
    rng = np.random.default_rng(seed)
    folder = base / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    codes = [1.0, 0.0, -1.0, np.nan]
    for name, top, patients in (
        ("train.csv", "train", range(1, n_patients + 1)),
        ("valid.csv", "valid", [64541]),
    ):
        rows = []
        for p in patients:
            for study in (1, 2):
                for view, fl, appa in (
                    ("view1_frontal", "Frontal", "AP" if p % 2 else "PA"),
                    ("view2_lateral", "Lateral", ""),
                ):
                    path = f"{FOLDER}/{top}/patient{p:05d}/study{study}/{view}.jpg"
                    sex = ["Male", "Female", "Unknown"][p % 3]
                    findings = [codes[int(rng.integers(4))] for _ in FINDINGS]
                    rows.append([path, sex, 20 + 11 * p, fl, appa, *findings])
        pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(folder / name, index=False)
        if images:
            for row in rows:
                target = base / row[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(target)
    return folder


def test_official_schema_codes_and_paths(tmp_path):
    folder = write_chexpert(tmp_path)
    raw = pd.read_csv(folder / "train.csv")
    for root in (tmp_path, folder):  # the folder above, or the CheXpert folder itself
        df = load_dataset("chexpert", root, finding="Edema", uncertainty="u_ones")
        assert len(df) == len(raw) + 4
        check_images(df, root)  # every path resolves under root
    df = load_dataset("chexpert", folder, finding="Edema", uncertainty="u_ones")
    train = df[df["split"] == "train"].reset_index(drop=True)
    code = raw["Edema"]
    assert (train["label"].to_numpy() == ((code == 1) | (code == -1)).to_numpy()).all()
    assert (
        train["label_code"] == np.select([code == 1, code == 0, code == -1], ["1", "0", "-1"], "blank")
    ).all()
    assert train["path"][0] == "train/patient00001/study1/view1_frontal.jpg"
    assert set(df["sex"]) == {"male", "female", "unknown"}
    assert (df.loc[df["path"].str.contains("lateral"), "view"] == "lateral").all()
    assert set(df.loc[df["split"] == "val", "patient_id"]) == {"patient64541"}
    assert "race" not in df.columns  # no demographics file


def test_uncertainty_policies_and_frontal_only(tmp_path):
    folder = write_chexpert(tmp_path, images=False)
    code = pd.concat([pd.read_csv(folder / n)["Pleural Effusion"] for n in ("train.csv", "valid.csv")])
    ones = load_dataset("chexpert", folder, uncertainty="u_ones")
    zeros = load_dataset("chexpert", folder, uncertainty="u_zeros")
    ignore = load_dataset("chexpert", folder, uncertainty="ignore")
    assert ones["label"].sum() == ((code == 1) | (code == -1)).sum()
    assert zeros["label"].sum() == (code == 1).sum()
    assert len(ignore) == (code != -1).sum() and "-1" not in set(ignore["label_code"])
    frontal = load_dataset("chexpert", folder, frontal_only=True)
    assert len(frontal) == len(ones) // 2 and set(frontal["view"]) <= {"AP", "PA"}


def test_patient_level_split_has_no_patient_in_two_splits(tmp_path):
    folder = write_chexpert(tmp_path, n_patients=150, images=False)
    df = load_dataset("chexpert", folder, split="patient", seed=3)
    assert set(df["split"]) == {"train", "val", "external", "test"}
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    again = load_dataset("chexpert", folder, split="patient", seed=3)
    assert (again["split"] == df["split"]).all()


def test_bad_input_names_column_and_file(tmp_path):
    folder = write_chexpert(tmp_path, images=False)
    with pytest.raises(InputError, match="root not found"):
        load_dataset("chexpert", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="train.csv not found"):
        load_dataset("chexpert", tmp_path / "empty")
    with pytest.raises(InputError, match="finding must be one of"):
        load_dataset("chexpert", folder, finding="Effusion")
    raw = pd.read_csv(folder / "train.csv").rename(columns={"Sex": "Gender"})
    raw.to_csv(folder / "train.csv", index=False)
    with pytest.raises(InputError, match=r"train.csv: missing column\(s\) 'Sex'"):
        load_dataset("chexpert", folder)


def write_demo(path, patients):
    """CHEXPERT DEMO table as released (PATIENT, GENDER, AGE_AT_CXR, PRIMARY_RACE, ETHNICITY)."""
    races = [
        "White, non-Hispanic",
        "Black or African American",
        "Asian - Historical Conv",
        "Native Hawaiian or Other Pacific Islander",
        "Patient Refused",
        "White or Caucasian",
    ]
    ethnicities = ["Non-Hispanic/Non-Latino", "Hispanic/Latino", "Unknown", "Not Hispanic", None, "Hispanic"]
    demo = pd.DataFrame(
        {
            "PATIENT": [f"patient{p:05d}" for p in patients],
            "GENDER": "Male",
            "AGE_AT_CXR": 50,
            "PRIMARY_RACE": [races[i % len(races)] for i in range(len(patients))],
            "ETHNICITY": [ethnicities[i % len(ethnicities)] for i in range(len(patients))],
        }
    )
    if path.suffix == ".xlsx":
        demo.to_excel(path, index=False)
    else:
        demo.to_csv(path, index=False)
    return demo


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_demographics_add_race_by_patient(tmp_path, suffix):
    folder = write_chexpert(tmp_path, images=False)
    write_demo(folder / f"CHEXPERT DEMO{suffix}", [1, 2, 3, 4, 5])  # patient 6 and the valid patient: absent
    df = load_dataset("chexpert", tmp_path, finding="Edema")  # found beside train.csv
    by_patient = df.drop_duplicates("patient_id").set_index("patient_id")
    assert by_patient.loc["patient00001", "race"] == "white"
    assert by_patient.loc["patient00002", ["race", "ethnicity"]].tolist() == ["black", "hispanic"]
    assert by_patient.loc["patient00003", "race"] == "asian"
    assert by_patient.loc["patient00004", ["race", "ethnicity"]].tolist() == ["other", "non_hispanic"]
    assert by_patient.loc["patient00005", "race"] == "unknown"  # "Patient Refused"
    assert (
        by_patient.loc["patient00006", "race"] == "unknown"
        and by_patient.loc["patient64541", "race"] == "unknown"
    )
    assert (df.groupby("patient_id")["race"].nunique() == 1).all()
    assert len(df) == len(load_dataset("chexpert", tmp_path / FOLDER, finding="Edema", demographics=None))


def test_demographics_bad_input(tmp_path):
    folder = write_chexpert(tmp_path, images=False)
    with pytest.raises(InputError, match="demographics file not found"):
        load_dataset("chexpert", folder, demographics=tmp_path / "nope.csv")
    pd.DataFrame({"PATIENT": ["patient00001"], "RACE": ["White"]}).to_csv(tmp_path / "demo.csv", index=False)
    with pytest.raises(InputError, match=r"demo.csv: missing column\(s\) 'PRIMARY_RACE', 'ETHNICITY'"):
        load_dataset("chexpert", folder, demographics=tmp_path / "demo.csv")
    (tmp_path / "demo.xlsx").write_text("not a workbook")
    with pytest.raises(InputError, match="demo.xlsx: unreadable workbook"):
        load_dataset("chexpert", folder, demographics=tmp_path / "demo.xlsx")
