"""Training with ``data.skip_bad_images``: missing/corrupt images are skipped, counted and left out
of the predictions; without the option the first bad image is an error naming the file."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from trustmed.config import load_config
from trustmed.data import load_dataset
from trustmed.data.synth.skin import generate_synthskin
from trustmed.errors import InputError
from trustmed.train.classifier import TrainConfig, train_classifier

SIZES = {"image_size": 16, "n_train": 96, "n_val": 32, "n_external": 8, "n_test": 24, "n_ood": 0}


@pytest.fixture()
def damaged_root(tmp_path):
    root = generate_synthskin(tmp_path / "skin", seed=1, **SIZES)
    manifest = load_dataset("fitzpatrick17k", root)
    train = manifest[manifest["split"] == "train"]
    test = manifest[manifest["split"] == "test"]
    for rel in train["path"].iloc[:3]:
        (root / rel).unlink()  # missing
    (root / test["path"].iloc[0]).write_bytes(b"not a jpeg")  # corrupt
    return root, set(train["sample_id"].iloc[:3]), test["sample_id"].iloc[0]


def _cfg(root, skip):
    sets = [
        f"data.root={root}",
        "data.image_size=16",
        "model.width=4",
        "optim.epochs=1",
        f"data.skip_bad_images={str(skip).lower()}",
        "data.cache=false",
    ]
    return load_config(TrainConfig, None, sets)


def test_skipped_images_are_counted_and_left_out(damaged_root, tmp_path):
    root, missing_ids, corrupt_id = damaged_root
    result = train_classifier(_cfg(root, True), tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["images_skipped"]["missing"] == 3
    train_pred = pd.read_csv(tmp_path / "run" / "predictions_train.csv")
    assert len(train_pred) == SIZES["n_train"] - 3
    assert not missing_ids & set(train_pred["sample_id"])
    test_pred = result.predictions["test"]
    assert corrupt_id not in set(test_pred["sample_id"])
    assert len(test_pred) == SIZES["n_test"] - 1
    assert test_pred["score"].between(0, 1).all()


def test_without_skipping_the_bad_image_is_named(damaged_root, tmp_path):
    root, _, _ = damaged_root
    with pytest.raises(InputError, match=r"\.jpg"):
        train_classifier(_cfg(root, False), tmp_path / "run")
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
