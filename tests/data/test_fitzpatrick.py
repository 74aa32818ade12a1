"""Fitzpatrick17k loader on a fixture with the official schema and value codings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trustmed.data import load_dataset
from trustmed.data.fitzpatrick import OFFICIAL_COLUMNS, load_fitzpatrick17k
from trustmed.data.images import ImageDataset
from trustmed.errors import InputError

# Rows in the official layout: unknown skin type (-1), empty qc, qc codes, non-neoplastic rows.
ROWS = [
    (
        "5e82a45bc5d78bd24ae9202d194423f8",
        3,
        3,
        "drug induced pigmentary changes",
        "inflammatory",
        "non-neoplastic",
        "",
    ),
    ("fa2911a9b13b6f8af79cb700937cc14f", 1, 1, "photodermatoses", "inflammatory", "non-neoplastic", ""),
    ("d2bac3c9e4499032ca8e9b07c7d3bc40", 2, 3, "dermatofibroma", "benign dermal", "benign", "1 Diagnostic"),
    ("0a94359e7eaacd7178e06b2823777789", -1, 1, "psoriasis", "inflammatory", "non-neoplastic", ""),
    ("2b3bd5d30d2a5ea2c4f0e3d4b4e08d2a", 5, 5, "kaposi sarcoma", "malignant dermal", "malignant", ""),
    (
        "6f3c3a1f6e7d4bb0b3b7a14f64ae7e0c",
        6,
        5,
        "melanoma",
        "malignant melanoma",
        "malignant",
        "2 Characteristic",
    ),
    (
        "9c0d7b7a3f0d4d8e8f3ab8b1a4c3e2d1",
        4,
        4,
        "basal cell carcinoma",
        "malignant epidermal",
        "malignant",
        "",
    ),
    (
        "b3c1e0d2a9f84c6b8e7d6c5b4a3f2e1d",
        2,
        2,
        "squamous cell carcinoma",
        "malignant epidermal",
        "malignant",
        "3 Wrongly labelled",
    ),
    ("c4d2f1e3b0a94d7c9f8e7d6c5b4a3f2e", 4, -1, "seborrheic keratosis", "benign epidermal", "benign", ""),
    ("d5e3a2f4c1b04e8d0a9f8e7d6c5b4a3f", 1, 2, "nevocytic nevus", "benign melanocyte", "benign", ""),
]


def _write_fixture(root, rows=ROWS, images=True):
    records = []
    for md5, scale, centaur, label, nine, three, qc in rows:
        url = f"https://www.dermaamin.com/site/images/clinical-pic/{label.replace(' ', '-')}/{md5[:6]}.jpg"
        alnum = "".join(ch for ch in url[:-4] if ch.isalnum()) + ".jpg"
        records.append((md5, scale, centaur, label, nine, three, qc, url, alnum))
    pd.DataFrame(records, columns=list(OFFICIAL_COLUMNS)).to_csv(root / "fitzpatrick17k.csv", index=False)
    if images:
        for md5, *_ in rows:
            Image.fromarray(np.full((10, 10, 3), 128, np.uint8)).save(root / f"{md5}.jpg")
    return root


def test_codings(tmp_path):
    df = load_fitzpatrick17k(_write_fixture(tmp_path), seed=0)
    by_id = df.set_index("sample_id")
    assert by_id.loc["0a94359e7eaacd7178e06b2823777789", "skin_tone"] == "unknown"
    assert by_id.loc["0a94359e7eaacd7178e06b2823777789", "fitzpatrick"] == -1
    assert by_id.loc["c4d2f1e3b0a94d7c9f8e7d6c5b4a3f2e", "fitzpatrick_centaur"] == -1
    assert df["label"].sum() == 4  # the four malignant rows
    assert (df["skin_tone"] == "dark").sum() == 4 and (df["skin_tone"] == "light").sum() == 5
    assert by_id.loc["b3c1e0d2a9f84c6b8e7d6c5b4a3f2e1d", "qc"] == "3 Wrongly labelled"
    assert (df["path"] == df["sample_id"] + ".jpg").all()
    assert (df["patient_id"] == df["sample_id"]).all()
    assert set(df["sex"]) == {"unknown"} and set(df["age_bin"]) == {"unknown"}
    assert set(df["split"]) <= {"train", "val", "external", "test"}


def test_options(tmp_path):
    root = _write_fixture(tmp_path)
    assert (load_fitzpatrick17k(root, dark_threshold=5)["skin_tone"] == "dark").sum() == 2
    benign_only = load_fitzpatrick17k(root, label="malignant_vs_benign")
    assert len(benign_only) == 7 and "non-neoplastic" not in set(benign_only["three_partition_label"])
    assert len(load_fitzpatrick17k(root, drop_qc=["3 Wrongly labelled"])) == 9
    assert len(load_fitzpatrick17k(root, drop_unknown_skin=True)) == 9
    assert load_dataset("fitzpatrick17k", root, label="malignant_vs_benign").equals(benign_only)


def test_seeded_stratified_split_without_side_file(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        (f"{i:032x}", int(rng.integers(1, 7)), 1, "x", "y", ["benign", "malignant"][i % 2], "")
        for i in range(400)
    ]
    root = _write_fixture(tmp_path, rows, images=False)
    a, b = load_fitzpatrick17k(root, seed=1), load_fitzpatrick17k(root, seed=1)
    assert a["split"].equals(b["split"]) and not a["split"].equals(load_fitzpatrick17k(root, seed=2)["split"])
    share = a["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.70) < 0.02 and abs(share["test"] - 0.15) < 0.02
    prevalence = a.groupby("split")["label"].mean()
    assert prevalence.max() - prevalence.min() < 0.05
    custom = load_fitzpatrick17k(root, split_fractions={"train": 0.5, "test": 0.5})
    assert set(custom["split"]) == {"train", "test"}


def test_metadata_only_then_missing_image_error(tmp_path):
    root = _write_fixture(tmp_path, images=False)
    df = load_fitzpatrick17k(root)
    assert len(df) == len(ROWS)
    with pytest.raises(InputError, match=f"image not found: .*{ROWS[0][0]}.jpg"):
        ImageDataset(df, root, image_size=8)


def test_side_file_and_images_folder(tmp_path):
    root = _write_fixture(tmp_path, images=False)
    (root / "images").mkdir()
    side = pd.DataFrame(
        {
            "md5hash": [r[0] for r in ROWS],
            "split": ["train"] * 6 + ["test"] * 4,
            "sex": ["male", "female"] * 5,
            "age": [30, 45, 61, 80, None] * 2,
            "patient_id": [f"p{i // 2}" for i in range(10)],
        }
    )
    side.to_csv(root / "fitzpatrick17k_meta.csv", index=False)
    df = load_fitzpatrick17k(root)
    assert df["split"].tolist() == side["split"].tolist()
    assert df["patient_id"].tolist() == side["patient_id"].tolist()
    assert df["age_bin"].tolist()[:5] == ["<40", "40-59", "60-74", "75+", "unknown"]
    assert df["path"].iloc[0] == f"images/{ROWS[0][0]}.jpg"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.drop(columns=["three_partition_label"]),
            "missing column.*three_partition_label.*available: md5hash",
        ),
        (lambda d: d.assign(fitzpatrick_scale=7), "fitzpatrick_scale must be 1-6 or -1"),
        (lambda d: d.assign(three_partition_label="maybe"), "three_partition_label must be"),
    ],
)
def test_bad_csv(tmp_path, edit, message):
    root = _write_fixture(tmp_path, images=False)
    edit(pd.read_csv(root / "fitzpatrick17k.csv")).to_csv(root / "fitzpatrick17k.csv", index=False)
    with pytest.raises(InputError, match=message):
        load_fitzpatrick17k(root)


def test_wrong_root(tmp_path):
    with pytest.raises(InputError, match="root not found"):
        load_fitzpatrick17k(tmp_path / "nope")
    with pytest.raises(InputError, match="fitzpatrick17k.csv not found"):
        load_fitzpatrick17k(tmp_path)
