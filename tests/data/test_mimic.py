"""MIMIC-CXR-JPG loader (with MIMIC-IV demographics) on fixtures in the official schemas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trustmed.data import load_dataset
from trustmed.data.chexpert import FINDINGS
from trustmed.data.manifest import check_images
from trustmed.errors import InputError

PREFIX = "mimic-cxr-2.0.0"
META_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip


def write_mimic(root, n_subjects=30, images=True, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    meta, labels, splits = [], [], []
    for s in range(n_subjects):
        subject = 10000032 + 1000003 * s
        split = ["train", "validate", "test"][s % 3]
        for k in range(2):
            study = 50000000 + 17 * s + k
            codes = [[1.0, 0.0, -1.0, np.nan][int(rng.integers(4))] for _ in FINDINGS]
            labels.append([subject, study, *codes])
            for view in ("PA", "LATERAL", "AP" if k else ""):
                dicom = f"{rng.integers(16**8):08x}-{rng.integers(16**8):08x}"
                meta.append(
                    [
                        dicom,
                        subject,
                        study,
                        "CHEST (PA AND LAT)",
                        view or None,
                        3056,
                        2544,
                        21800506,
                        213014.531,
                        "CHEST (PA AND LAT)",
                        "postero-anterior",
                        "Erect",
                    ]
                )
                splits.append([dicom, study, subject, split])
    ext = ".csv.gz" if gz else ".csv"
    meta = pd.DataFrame(meta, columns=META_COLUMNS)
    meta.to_csv(root / f"{PREFIX}-metadata{ext}", index=False)
    labels = pd.DataFrame(labels, columns=["subject_id", "study_id", *sorted(FINDINGS)])
    labels = labels.iloc[:-1]  # one study without a report label
    labels.to_csv(root / f"{PREFIX}-chexpert{ext}", index=False)
    pd.DataFrame(splits, columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(
        root / f"{PREFIX}-split{ext}", index=False
    )
    subjects = sorted(meta["subject_id"].unique())
    hosp = root / "hosp"
    hosp.mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "subject_id": subjects[:-1],  # one subject missing from MIMIC-IV
            "gender": [["M", "F"][i % 2] for i in range(len(subjects) - 1)],
            "anchor_age": [18 + 3 * i for i in range(len(subjects) - 1)],
            "anchor_year": 2150,
            "anchor_year_group": "2008 - 2010",
            "dod": None,
        }
    ).to_csv(hosp / "patients.csv.gz", index=False)
    races = [
        "WHITE",
        "BLACK/AFRICAN AMERICAN",
        "ASIAN - CHINESE",
        "HISPANIC/LATINO - PUERTO RICAN",
        "UNKNOWN",
    ]
    adm = [
        {"subject_id": sid, "hadm_id": 20000000 + i, "race": races[i % 5]} for i, sid in enumerate(subjects)
    ]
    adm.append({"subject_id": subjects[4], "hadm_id": 1, "race": "UNABLE TO OBTAIN"})
    adm.append({"subject_id": subjects[4], "hadm_id": 2, "race": "WHITE"})
    adm.append({"subject_id": subjects[4], "hadm_id": 3, "race": "WHITE"})
    pd.DataFrame(adm).to_csv(hosp / "admissions.csv.gz", index=False)
    if images:
        for m in meta.itertuples():
            path = root / f"files/p{str(m.subject_id)[:2]}/p{m.subject_id}/s{m.study_id}/{m.dicom_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
    return meta, labels


def test_join_paths_views_and_demographics(tmp_path):
    meta, labels = write_mimic(tmp_path)
    df = load_dataset("mimic_cxr", tmp_path, finding="Edema", uncertainty="u_zeros")
    check_images(df, tmp_path)
    frontal = meta[meta["ViewPosition"].isin(["PA", "AP"])]
    joined = frontal.merge(labels, on=["subject_id", "study_id"])
    assert len(df) == len(joined)
    assert set(df["view"]) == {"PA", "AP"}
    row = df.iloc[0]
    assert (
        row["path"]
        == f"files/p{row['patient_id'][:2]}/p{row['patient_id']}/s{row['study_id']}/{row['sample_id']}.jpg"
    )
    truth = joined.set_index("dicom_id").loc[df["sample_id"], "Edema"]
    assert (df["label"].to_numpy() == (truth == 1.0).to_numpy()).all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert set(df["race"]) == {"white", "black", "asian", "hispanic", "unknown"}
    subject4 = str(sorted(meta["subject_id"].unique())[4])
    assert set(df.loc[df["patient_id"] == subject4, "race"]) == {"white"}  # mode of known values
    missing = str(sorted(meta["subject_id"].unique())[-1])
    assert set(df.loc[df["patient_id"] == missing, "sex"]) == {"unknown"}
    assert set(df["sex"]) == {"male", "female", "unknown"}
    every_view = load_dataset("mimic_cxr", tmp_path, views=None)
    assert len(every_view) == len(meta.merge(labels, on=["subject_id", "study_id"]))


def test_patient_split_and_no_demographics(tmp_path):
    write_mimic(tmp_path, n_subjects=90, images=False, gz=False)
    df = load_dataset("mimic_cxr", tmp_path, split="patient", seed=2)
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert "external" in set(df["split"])
    import shutil

    shutil.rmtree(tmp_path / "hosp")
    bare = load_dataset("mimic_cxr", tmp_path)
    assert set(bare["sex"]) == {"unknown"} and set(bare["race"]) == {"unknown"}


def test_bad_input(tmp_path):
    with pytest.raises(InputError, match="root not found"):
        load_dataset("mimic_cxr", tmp_path / "nope")
    with pytest.raises(InputError, match="mimic-cxr-2.0.0-metadata.csv\\(.gz\\) not found"):
        load_dataset("mimic_cxr", tmp_path)
    write_mimic(tmp_path, images=False, gz=False)
    split = pd.read_csv(tmp_path / f"{PREFIX}-split.csv").rename(columns={"split": "fold"})
    split.to_csv(tmp_path / f"{PREFIX}-split.csv", index=False)
    with pytest.raises(InputError, match=r"split.csv: missing column\(s\) 'split'"):
        load_dataset("mimic_cxr", tmp_path)
