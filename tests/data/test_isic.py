"""ISIC 2019 and ISIC 2020 loaders on fixtures in the official CSV schemas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trustmed.data import load_dataset
from trustmed.data.isic import ISIC2019_CLASSES
from trustmed.data.manifest import check_images
from trustmed.errors import InputError


def write_isic2019(root, n=120, images=True, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"ISIC_{i:07d}" + ("_downsampled" if i % 7 == 0 else "") for i in range(n)]
    classes = rng.integers(0, 8, n)  # UNK never set, as in the published training set
    gt = pd.DataFrame(np.eye(9)[classes], columns=list(ISIC2019_CLASSES))
    gt.insert(0, "image", names)
    gt.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    meta = pd.DataFrame(
        {
            "image": names,
            "age_approx": [np.nan if i % 9 == 0 else 5 * (4 + i % 14) for i in range(n)],
            "anatom_site_general": ["anterior torso", "head/neck", None, "lower extremity"] * (n // 4),
            "lesion_id": [None if i % 5 == 0 else f"BCN_{i // 3:07d}" for i in range(n)],
            "sex": ["male", "female", None] * (n // 3),
        }
    )
    meta.to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    if images:
        (root / "ISIC_2019_Training_Input").mkdir(exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
                root / "ISIC_2019_Training_Input" / f"{name}.jpg"
            )
    return gt, meta


def write_isic2020(root, n_patients=60, images=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(1 + p % 4):  # many images per patient
            target = int(rng.random() < 0.2)
            rows.append(
                {
                    "image_name": f"ISIC_{len(rows) + 15000:07d}",
                    "patient_id": f"IP_{p:07d}",
                    "sex": None if p % 11 == 0 else ["male", "female"][p % 2],
                    "age_approx": np.nan if p % 13 == 0 else 5.0 * (3 + p % 15),
                    "anatom_site_general_challenge": [None, "torso", "upper extremity"][k % 3],
                    "diagnosis": "melanoma" if target else "unknown",
                    "benign_malignant": "malignant" if target else "benign",
                    "target": target,
                }
            )
    gt = pd.DataFrame(rows)
    gt.to_csv(root / "ISIC_2020_Training_GroundTruth.csv", index=False)
    if images:
        (root / "train").mkdir(exist_ok=True)
        for name in gt["image_name"]:
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
                root / "train" / f"{name}.jpg"
            )
    return gt


def test_isic2019_join_labels_and_lesion_split(tmp_path):
    gt, meta = write_isic2019(tmp_path)
    df = load_dataset("isic2019", tmp_path)
    check_images(df, tmp_path)
    truth = gt[["MEL", "BCC", "SCC"]].sum(axis=1).astype(int).to_numpy()
    assert (df["label"].to_numpy() == truth).all()
    with_ak = load_dataset("isic2019", tmp_path, include_ak=True)
    assert with_ak["label"].sum() == df["label"].sum() + int(gt["AK"].sum())
    assert df["path"][0] == "ISIC_2019_Training_Input/ISIC_0000000_downsampled.jpg"
    assert (df["sex"] == "unknown").sum() == meta["sex"].isna().sum()
    assert (df["age_bin"] == "unknown").sum() == meta["age_approx"].isna().sum()
    assert df.groupby("patient_id")["split"].nunique().max() == 1  # one lesion, one split
    assert (
        df.loc[meta["lesion_id"].isna().to_numpy(), "patient_id"]
        == meta["image"][meta["lesion_id"].isna()].to_numpy()
    ).all()


def test_isic2020_patient_split_and_duplicates(tmp_path):
    gt = write_isic2020(tmp_path)
    df = load_dataset("isic2020", tmp_path, seed=1)
    check_images(df, tmp_path)
    assert (df["label"].to_numpy() == gt["target"].to_numpy()).all()
    assert set(df["split"]) == {"train", "val", "external", "test"}
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert (df["sex"] == "unknown").sum() == gt["sex"].isna().sum()
    pd.DataFrame(
        {"image_name_1": gt["image_name"][:2], "image_name_2": gt["image_name"][2:4].to_numpy()}
    ).to_csv(tmp_path / "ISIC_2020_Training_Duplicates.csv", index=False)
    deduped = load_dataset("isic2020", tmp_path)
    assert len(deduped) == len(gt) - 2 and not deduped["sample_id"].isin(gt["image_name"][2:4]).any()
    assert len(load_dataset("isic2020", tmp_path, drop_duplicates=False)) == len(gt)


def test_isic_bad_input(tmp_path):
    with pytest.raises(InputError, match="root not found"):
        load_dataset("isic2020", tmp_path / "nope")
    with pytest.raises(InputError, match="ISIC_2020_Training_GroundTruth.csv: not found"):
        load_dataset("isic2020", tmp_path)
    gt = write_isic2020(tmp_path, images=False)
    gt.drop(columns="target").to_csv(tmp_path / "ISIC_2020_Training_GroundTruth.csv", index=False)
    with pytest.raises(InputError, match=r"GroundTruth.csv: missing column\(s\) 'target'"):
        load_dataset("isic2020", tmp_path)
    write_isic2019(tmp_path, images=False)
    meta = pd.read_csv(tmp_path / "ISIC_2019_Training_Metadata.csv").rename(columns={"lesion_id": "lesion"})
    meta.to_csv(tmp_path / "ISIC_2019_Training_Metadata.csv", index=False)
    with pytest.raises(InputError, match=r"Metadata.csv: missing column\(s\) 'lesion_id'"):
        load_dataset("isic2019", tmp_path)
