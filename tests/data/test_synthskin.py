"""SynthSkin: format, determinism, split design and the bias knobs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trustmed.data import load_dataset
from trustmed.data.synth.skin import FITZPATRICK17K_COLUMNS, SKIN_RGB, generate_synthskin, render_lesions
from trustmed.errors import InputError

SMALL = {"image_size": 16, "n_train": 200, "n_val": 40, "n_external": 40, "n_test": 80, "n_ood": 40}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_synthskin(tmp_path_factory.mktemp("synthskin"), seed=3, **SMALL)


def test_official_format_and_side_file(synth):
    official = pd.read_csv(synth / "fitzpatrick17k.csv")
    assert tuple(official.columns) == FITZPATRICK17K_COLUMNS
    assert official["md5hash"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert official["md5hash"].is_unique
    assert set(official["three_partition_label"]) == {"benign", "malignant"}
    assert official["fitzpatrick_scale"].between(1, 6).all()
    assert (official["fitzpatrick_centaur"] - official["fitzpatrick_scale"]).abs().max() <= 1
    meta = pd.read_csv(synth / "synthskin_meta.csv")
    assert list(meta.columns) == ["md5hash", "split", "sex", "age", "patient_id"]
    assert set(meta["md5hash"]) == set(official["md5hash"])
    for name in official["md5hash"].head(5):
        assert Image.open(synth / "images" / f"{name}.jpg").size == (16, 16)


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path, synth):
    again = generate_synthskin(tmp_path / "a", seed=3, **SMALL)
    other = generate_synthskin(tmp_path / "b", seed=4, **SMALL)
    for name in ("fitzpatrick17k.csv", "synthskin_meta.csv"):
        assert (again / name).read_bytes() == (synth / name).read_bytes()
        assert (other / name).read_bytes() != (synth / name).read_bytes()
    first = pd.read_csv(synth / "fitzpatrick17k.csv")["md5hash"].iloc[0]
    assert (again / "images" / f"{first}.jpg").read_bytes() == (
        synth / "images" / f"{first}.jpg"
    ).read_bytes()


def test_splits_sizes_balance_and_patients(synth):
    df = load_dataset("synthskin", synth)
    assert df["split"].value_counts().to_dict() == {
        "train": 200,
        "test": 80,
        "val": 40,
        "external": 40,
        "ood": 40,
    }
    for split in ("test", "external"):
        cells = df[df["split"] == split].groupby(["skin_tone", "label"]).size()
        assert len(cells) == 4 and cells.max() - cells.min() == 0
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert df.groupby("patient_id")["fitzpatrick"].nunique().max() == 1
    assert set(df["sex"]) == {"female", "male"} and df["age"].between(18, 95).all()
    assert set(df["age_bin"]) <= {"<40", "40-59", "60-74", "75+"}


def test_train_under_representation_knob(tmp_path):
    def dark_rate(ratio):
        root = generate_synthskin(
            tmp_path / str(ratio),
            seed=0,
            train_dark_malignant_ratio=ratio,
            image_size=16,
            n_train=1500,
            n_val=4,
            n_external=4,
            n_test=4,
            n_ood=0,
        )
        df = load_dataset("synthskin", root)
        train = df[df["split"] == "train"]
        return train.groupby("skin_tone")["label"].mean()

    biased, fair = dark_rate(0.1), dark_rate(1.0)
    assert biased["dark"] < 0.1 < 0.3 < biased["light"]
    assert abs(fair["dark"] - fair["light"]) < 0.08


def _lesion_contrast(fitzpatrick: int, dark_contrast: float) -> float:
    rng = np.random.default_rng(0)
    n = 64
    images = render_lesions(
        rng,
        np.full(n, fitzpatrick),
        np.full(n, 0.5, np.float32),
        np.full(n, 50.0),
        image_size=32,
        dark_contrast=dark_contrast,
        noise=0.0,
    )
    centre = images[:, 14:18, 14:18].mean(axis=(1, 2, 3))
    border = images[:, :3, :].mean(axis=(1, 2, 3))
    return float(np.mean((border - centre) / border))


def test_dark_contrast_knob_lowers_lesion_contrast_on_dark_skin_only():
    assert _lesion_contrast(6, 0.5) < 0.75 * _lesion_contrast(6, 1.0)
    assert abs(_lesion_contrast(2, 0.5) - _lesion_contrast(2, 1.0)) < 1e-6
    assert SKIN_RGB[0].mean() > SKIN_RGB[5].mean()


def test_ood_split_is_shifted(synth):
    df = load_dataset("synthskin", synth)

    def mean_rgb(split):
        paths = df.loc[(df["split"] == split) & (df["fitzpatrick"] <= 3), "path"].head(15)
        return np.mean(
            [np.asarray(Image.open(synth / p), dtype=float).mean(axis=(0, 1)) for p in paths], axis=0
        )

    test, ood = mean_rgb("test"), mean_rgb("ood")
    assert ood[2] / ood[0] < 0.92 * test[2] / test[0]


def test_bad_knob_is_input_error(tmp_path):
    with pytest.raises(InputError, match="fitzpatrick_mix"):
        generate_synthskin(tmp_path, fitzpatrick_mix=[1, 1])
    with pytest.raises(InputError, match="n_trian"):
        generate_synthskin(tmp_path, n_trian=5)
