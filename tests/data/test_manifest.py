"""Manifest validation, CSV reading, splits, the dataset registry and image reading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trustmed.data import DATASETS, load_dataset
from trustmed.data.images import ImageDataset, make_loader, read_image
from trustmed.data.manifest import (
    age_bins,
    read_manifest,
    skin_tone_from_fitzpatrick,
    stratified_split,
    validate_manifest,
)
from trustmed.errors import InputError


def _manifest(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "path": [f"img/s{i}.png" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "split": ["train"] * (n - 2) + ["val"] * 2,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "skin_tone": ["light", "dark"] * (n // 2),
        }
    )


def _write_images(root, df, size=12):
    rng = np.random.default_rng(0)
    for rel in df["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / rel)


def test_validate_orders_columns_and_fills_patient_id():
    df = _manifest().drop(columns="patient_id")[["skin_tone", "label", "path", "split", "sample_id"]]
    out = validate_manifest(df, attributes=["skin_tone"])
    assert list(out.columns[:5]) == ["sample_id", "path", "label", "split", "patient_id"]
    assert (out["patient_id"] == out["sample_id"]).all()
    assert out["label"].dtype == np.int64


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.drop(columns=["path"]), "missing column(s) 'path'"),
        (lambda d: d.assign(label=[0, 1, None, 1, 0, 1]), "missing or non-numeric 'label'"),
        (lambda d: d.assign(label=[0, 1, 0.5, 1, 0, 1]), "integer class codes"),
        (lambda d: d.assign(sample_id=["a", "a", "b", "c", "d", "e"]), "duplicate sample_id 'a'"),
        (lambda d: d.iloc[:0], "no rows"),
    ],
)
def test_validate_rejects_bad_input(mutate, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_manifest(mutate(_manifest()))


def test_validate_names_missing_attribute():
    with pytest.raises(InputError, match="'sex'.*available: sample_id"):
        validate_manifest(_manifest(), attributes=["sex"])


def test_age_bins_and_skin_tone():
    assert age_bins([39.9, 40, 60, 75, float("nan")]).tolist() == ["<40", "40-59", "60-74", "75+", "unknown"]
    tones = skin_tone_from_fitzpatrick([1, 2, 3, 4, 5, 6, -1], dark_threshold=5).tolist()
    assert tones == ["light"] * 4 + ["dark"] * 2 + ["unknown"]
    with pytest.raises(InputError, match="dark_threshold"):
        skin_tone_from_fitzpatrick([1], dark_threshold=9)


def test_stratified_split_keeps_patients_together_and_strata():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"patient_id": [f"p{i // 3}" for i in range(600)], "label": rng.integers(0, 2, 600)})
    df["label"] = df.groupby("patient_id")["label"].transform("first")
    split = stratified_split(df, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert split.groupby(df["patient_id"]).nunique().max() == 1
    share = split.value_counts(normalize=True)
    assert abs(share["train"] - 0.6) < 0.02 and abs(share["test"] - 0.2) < 0.02
    prevalence = df.groupby(split)["label"].mean()
    assert prevalence.max() - prevalence.min() < 0.05
    assert split.equals(stratified_split(df, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3))
    assert not split.equals(stratified_split(df, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=4))


def test_read_manifest_and_registry(tmp_path):
    df = _manifest()
    df.to_csv(tmp_path / "manifest.csv", index=False)
    via_file = read_manifest(tmp_path / "manifest.csv")
    via_registry = load_dataset("manifest", tmp_path)
    pd.testing.assert_frame_equal(via_file, via_registry)
    assert {"manifest", "fitzpatrick17k"} <= set(DATASETS)
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        load_dataset("nope", tmp_path)
    with pytest.raises(InputError, match="unknown option.*dark_thresh"):
        load_dataset("fitzpatrick17k", tmp_path, dark_thresh=3)
    with pytest.raises(InputError, match="manifest not found"):
        load_dataset("manifest", tmp_path / "missing")


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="image not found: .*nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="cannot read image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_image_dataset_items_and_missing_image(tmp_path):
    df = _manifest()
    _write_images(tmp_path, df)
    ds = ImageDataset(df, tmp_path, image_size=8)
    item = ds[3]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert float(item["label"]) == 1.0 and int(item["index"]) == 3
    raw = read_image(tmp_path / df["path"][3]).astype(np.float32) / 255
    assert torch.allclose(
        ImageDataset(df, tmp_path, image_size=12, cache=False)[3]["image"], torch.from_numpy(raw)
    )
    (tmp_path / df["path"][4]).unlink()
    with pytest.raises(InputError, match="image not found: .*s4.png"):
        ImageDataset(df, tmp_path, image_size=8)


def test_loader_shuffle_and_augment_are_seeded(tmp_path):
    df = _manifest(8)
    _write_images(tmp_path, df)

    def epoch(seed):
        torch.manual_seed(seed)
        loader = make_loader(df, tmp_path, image_size=8, batch_size=4, shuffle=True, seed=seed, augment=True)
        return torch.cat([b["image"] for b in loader]), torch.cat([b["index"] for b in loader])

    (a, ia), (b, ib), (c, ic) = epoch(0), epoch(0), epoch(1)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert not (torch.equal(ia, ic) and torch.equal(a, c))
    assert sorted(ia.tolist()) == list(range(8))
