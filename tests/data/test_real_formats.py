"""The published-format fixtures (tests/fixtures/real_formats.py) read by the registered loaders.

Each fixture goes through ``load_dataset`` with the default options; the checks are that the
quirks of the published files survive the loader, that every image resolves, that every split
has both classes and both groups, and that the images carry a signal that is harder to see in
one group.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from trustmed.data import load_dataset
from trustmed.data.chexpert import CSV_COLUMNS
from trustmed.data.fitzpatrick import OFFICIAL_COLUMNS
from trustmed.data.manifest import check_images, ensure_external

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.real_formats import (  # noqa: E402
    CHEXPERT_FOLDER,
    make_chexpert,
    make_fitzpatrick17k,
    make_isic2020,
    make_mimic_cxr,
)

ISIC2020_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
]


def assert_classes_and_groups(df: pd.DataFrame, splits: set[str], attribute: str, groups: set[str]) -> None:
    assert set(df["split"]) == splits
    for split, part in df.groupby("split"):
        assert set(part["label"]) == {0, 1}, split
        assert groups <= set(part[attribute]), (split, set(part[attribute]))
        for group in groups:  # both classes within each group too
            assert part.loc[part[attribute] == group, "label"].nunique() == 2, (split, group)


def assert_patient_disjoint(df: pd.DataFrame) -> None:
    assert df.groupby("patient_id")["split"].nunique().max() == 1


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    return make_chexpert(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    return make_mimic_cxr(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    return make_isic2020(tmp_path_factory.mktemp("isic"))


@pytest.fixture(scope="module")
def fitzpatrick(tmp_path_factory):
    return make_fitzpatrick17k(tmp_path_factory.mktemp("fitzpatrick"))


def test_chexpert_files_keep_the_published_quirks(chexpert):
    folder = chexpert / CHEXPERT_FOLDER
    train = pd.read_csv(folder / "train.csv")
    valid = pd.read_csv(folder / "valid.csv")
    assert list(train.columns) == list(CSV_COLUMNS) and list(valid.columns) == list(CSV_COLUMNS)
    assert (
        train["Path"]
        .str.match(rf"{CHEXPERT_FOLDER}/train/patient\d{{5}}/study\d/view\d_(frontal|lateral)\.jpg$")
        .all()
    )
    assert valid["Path"].str.startswith(f"{CHEXPERT_FOLDER}/valid/patient64541/").any()
    assert set(train["Sex"]) == {"Male", "Female", "Unknown"}
    lateral = train["Frontal/Lateral"] == "Lateral"
    assert lateral.any() and train.loc[lateral, "AP/PA"].isna().all()
    assert set(train.loc[~lateral, "AP/PA"]) == {"AP", "PA"}
    effusion = train["Pleural Effusion"]
    assert set(effusion.dropna()) == {1.0, 0.0, -1.0} and effusion.isna().any()
    assert set(valid["Pleural Effusion"]) == {1.0, 0.0}  # valid.csv: consensus labels, no blanks
    demo = pd.read_csv(folder / "CHEXPERT DEMO.csv")
    assert list(demo.columns) == ["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"]
    patients = train["Path"].str.split("/").str[2].nunique() + valid["Path"].str.split("/").str[2].nunique()
    assert 0 < patients - len(demo) < patients // 10  # a few patients missing from the table


def test_chexpert_loads_with_codes_race_and_images(chexpert):
    df = load_dataset("chexpert", chexpert)
    check_images(df, chexpert)
    assert {"-1", "blank", "0", "1"} == set(df["label_code"])
    uncertain = df["label_code"] == "-1"
    assert (df.loc[uncertain, "label"] == 1).all()  # u_ones, the default
    assert {"lateral", "AP", "PA"} == set(df["view"])
    assert {"white", "black", "asian", "other", "unknown"} == set(df["race"])
    assert (df.groupby("patient_id")["race"].nunique() == 1).all()
    assert_classes_and_groups(df, {"train", "val"}, "sex", {"male", "female"})
    carved = ensure_external(df, what="chexpert fixture")
    assert set(carved.loc[carved["split"] == "external", "label"]) == {0, 1}
    by_patient = load_dataset("chexpert", chexpert, split="patient")
    assert_classes_and_groups(by_patient, {"train", "val", "external", "test"}, "sex", {"male", "female"})
    assert_patient_disjoint(by_patient)


def test_chexpert_without_demographics(tmp_path):
    root = make_chexpert(tmp_path, n_patients=24, demographics=False)
    assert not (root / CHEXPERT_FOLDER / "CHEXPERT DEMO.csv").exists()
    df = load_dataset("chexpert", root)
    assert "race" not in df.columns and {"sex", "age_bin"} <= set(df.columns)


def test_mimic_tables_views_and_demographics(mimic):
    meta = pd.read_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz")
    labels = pd.read_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(labels.columns[:4]) == ["subject_id", "study_id", "Atelectasis", "Cardiomegaly"]
    assert (
        set(meta["ViewPosition"].dropna()) == {"PA", "AP", "LATERAL", "LL"}
        and meta["ViewPosition"].isna().any()
    )
    assert len(set(meta["study_id"]) - set(labels["study_id"])) == 1  # one study without a label row
    with gzip.open(mimic / "mimic-cxr-2.0.0-split.csv.gz", "rt") as f:
        assert f.readline().strip() == "dicom_id,study_id,subject_id,split"
    assert (mimic / "mimic-iv" / "hosp" / "admissions.csv.gz").is_file()

    df = load_dataset("mimic_cxr", mimic)
    check_images(df, mimic)
    assert set(df["view"]) == {"PA", "AP"}
    assert df["path"].str.match(r"files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.jpg$").all()
    assert {"-1", "blank", "1"} <= set(df["label_code"])
    assert {"white", "black", "asian", "hispanic", "other", "unknown"} == set(df["race"])
    assert set(df["sex"]) == {"male", "female", "unknown"}  # one subject missing from MIMIC-IV
    assert (df["age"].dropna().between(18, 91)).all()
    assert_classes_and_groups(df, {"train", "val", "test"}, "sex", {"male", "female"})
    carved = ensure_external(df, what="mimic fixture")
    assert set(carved.loc[carved["split"] == "external", "label"]) == {0, 1}
    by_sex = ensure_external(df, stratify=("label", "sex"), what="mimic fixture")
    assert_classes_and_groups(by_sex, {"train", "val", "external", "test"}, "sex", {"male", "female"})
    assert_patient_disjoint(by_sex)


def test_isic2020_columns_duplicates_and_splits(isic):
    gt = pd.read_csv(isic / "ISIC_2020_Training_GroundTruth.csv")
    assert list(gt.columns) == ISIC2020_COLUMNS
    assert gt["sex"].isna().any() and gt["age_approx"].isna().any()
    assert (
        gt["image_name"].str.fullmatch(r"ISIC_\d{7}").all()
        and gt["patient_id"].str.fullmatch(r"IP_\d{7}").all()
    )
    assert (gt.groupby("patient_id").size() > 1).any()
    dups = pd.read_csv(isic / "ISIC_2020_Training_Duplicates.csv")
    assert len(dups) == 2
    for first, second in dups.itertuples(index=False):
        assert (isic / "train" / f"{first}.jpg").read_bytes() == (
            isic / "train" / f"{second}.jpg"
        ).read_bytes()

    df = load_dataset("isic2020", isic)
    check_images(df, isic)
    assert len(df) == len(gt) - 2 and not df["sample_id"].isin(dups["image_name_2"]).any()
    assert {"male", "female", "unknown"} == set(df["sex"]) and "unknown" in set(df["age_bin"])
    assert_classes_and_groups(df, {"train", "val", "external", "test"}, "sex", {"male", "female"})
    assert_patient_disjoint(df)


def test_fitzpatrick17k_columns_skin_types_and_splits(fitzpatrick):
    raw = pd.read_csv(fitzpatrick / "fitzpatrick17k.csv")
    assert tuple(raw.columns) == OFFICIAL_COLUMNS
    assert raw["md5hash"].str.fullmatch(r"[0-9a-f]{32}").all() and raw["md5hash"].is_unique
    assert set(raw["fitzpatrick_scale"]) == {-1, 1, 2, 3, 4, 5, 6}
    assert set(raw["three_partition_label"]) == {"malignant", "benign", "non-neoplastic"}
    assert raw["qc"].isna().mean() > 0.9 and "3 Wrongly labelled" in set(raw["qc"])
    assert raw["url_alphanum"].str.fullmatch(r"[0-9A-Za-z]+\.jpg").all()

    df = load_dataset("fitzpatrick17k", fitzpatrick)
    check_images(df, fitzpatrick)
    assert (df["path"] == "images/" + df["sample_id"] + ".jpg").all()
    assert set(df["skin_tone"]) == {"light", "dark", "unknown"}
    assert_classes_and_groups(df, {"train", "val", "external", "test"}, "skin_tone", {"light", "dark"})


@pytest.mark.parametrize(
    ("name", "make", "options", "attribute", "hard", "easy"),
    [
        ("chexpert", make_chexpert, {"split": "patient"}, "sex", "female", "male"),
        ("mimic_cxr", make_mimic_cxr, {}, "sex", "female", "male"),
        ("isic2020", make_isic2020, {}, "sex", "female", "male"),
        ("fitzpatrick17k", make_fitzpatrick17k, {}, "skin_tone", "dark", "light"),
    ],
)
def test_images_carry_a_signal_that_one_group_shows_less(
    tmp_path, name, make, options, attribute, hard, easy
):
    root = make(tmp_path, seed=1)
    df = load_dataset(name, root, **options)
    pixels = np.stack(
        [
            np.asarray(Image.open(root / p).convert("L").resize((16, 16)), dtype=float).ravel() / 255
            for p in df["path"]
        ]
    )
    train = (df["split"] == "train").to_numpy()
    model = LogisticRegression(C=0.1, max_iter=2000).fit(pixels[train], df["label"][train])
    score, label = model.decision_function(pixels), df["label"].to_numpy()
    held_out = ~train
    assert roc_auc_score(label[held_out], score[held_out]) > 0.8
    margin = {}
    for group in (hard, easy):
        rows = held_out & (df[attribute] == group).to_numpy()
        margin[group] = score[rows & (label == 1)].mean() - score[rows & (label == 0)].mean()
    assert margin[hard] > 0 and margin[easy] > 1.5 * margin[hard]


def test_same_seed_same_tables_other_seed_differs(tmp_path):
    a = make_isic2020(tmp_path / "a", n_patients=20, seed=3)
    b = make_isic2020(tmp_path / "b", n_patients=20, seed=3)
    c = make_isic2020(tmp_path / "c", n_patients=20, seed=4)
    name = "ISIC_2020_Training_GroundTruth.csv"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()
    x = make_mimic_cxr(tmp_path / "x", n_subjects=12, seed=3)
    y = make_mimic_cxr(tmp_path / "y", n_subjects=12, seed=3)
    table = "mimic-cxr-2.0.0-metadata.csv.gz"
    assert pd.read_csv(x / table).equals(pd.read_csv(y / table))
