"""The dataset registry (every kind looked up by name) and the synthetic-benchmark registry."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pandas as pd
import pytest

from trustmed.data import (
    DATASETS,
    KINDS,
    Dataset,
    dataset_defaults,
    dataset_kind,
    dataset_loader,
    dataset_names,
    load_dataset,
)
from trustmed.data.manifest import attribute_columns
from trustmed.data.mscxr import GROUNDING_COLUMNS
from trustmed.data.synth import GENERATORS, Generator, generate
from trustmed.data.synth.cxr import make_synthcxr, make_synthcxr_vindr
from trustmed.data.synth.digits import make_colored_digits
from trustmed.data.synth.skin import generate_synthskin
from trustmed.errors import InputError
from trustmed.models.classifier import ARCHITECTURES

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.real_formats import (  # noqa: E402
    make_chexpert,
    make_fitzpatrick17k,
    make_isic2020,
    make_mimic_cxr,
)


def test_every_entry_resolves_to_a_loader_of_a_known_kind():
    for name, entry in DATASETS.items():
        assert entry.kind in KINDS, name
        root, *options = inspect.signature(dataset_loader(name)).parameters.values()
        assert root.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name  # the root first, options after
        assert all(option.kind is inspect.Parameter.KEYWORD_ONLY for option in options), name
    assert dataset_names("grounding") == ["mscxr", "nih_bbox", "synthcxr", "synthcxr_vindr", "vindr"]
    assert dataset_names("group") == ["coloreddigits", "mnms", "waterbirds"]
    assert set(dataset_names()) == set(DATASETS)
    assert dataset_kind("chexpert") == "classification"
    with pytest.raises(InputError, match="unknown dataset kind 'segmentation'"):
        dataset_names("segmentation")
    with pytest.raises(InputError, match="unknown dataset 'msxcr'"):
        dataset_kind("msxcr")


def test_grounding_and_group_datasets_load_by_name(tmp_path):
    make_synthcxr(tmp_path / "cxr", n_images=6, image_size=32, seed=1)
    pairs = load_dataset("synthcxr", tmp_path / "cxr", split="test")
    assert list(pairs.columns) == GROUNDING_COLUMNS and len(pairs) > 0 and set(pairs.split) == {"test"}
    make_synthcxr_vindr(tmp_path / "ood", n_images=3, image_size=32)
    ood = load_dataset("synthcxr_vindr", tmp_path / "ood", classes=None, sentences="auto")
    assert list(ood.columns) == GROUNDING_COLUMNS and ood.path.str.endswith(".dicom").all()
    with pytest.raises(InputError, match="unknown option.*sentence; valid options: split, classes, prompt"):
        load_dataset("vindr", tmp_path / "ood", sentence="auto")
    make_colored_digits(tmp_path / "digits", seed=0, image_size=8)
    groups = load_dataset("coloreddigits", tmp_path / "digits")
    assert groups["group"].nunique() == 4 and {"sample_id", "path", "label", "split"} <= set(groups.columns)


def test_generators_validate_their_knobs_before_writing(tmp_path):
    assert {"skin", "digits", "cxr"} <= set(GENERATORS)
    knobs = GENERATORS["cxr"].knobs()()
    assert (knobs.seed, knobs.n_images, knobs.image_size, knobs.vindr) == (0, 600, 128, False)
    assert GENERATORS["skin"].knobs()().n_train == 2400  # the explicit config class
    out = generate("cxr", tmp_path / "v", n_images=3, image_size=32, vindr=True)
    assert (out / "annotations" / "annotations_test.csv").is_file()
    with pytest.raises(InputError, match="unknown config key 'n_image'.*did you mean 'n_images'"):
        generate("cxr", tmp_path / "bad", n_image=3)
    with pytest.raises(InputError, match="config key 'image_size'.*valid integer"):
        generate("digits", tmp_path / "bad", image_size="big")
    with pytest.raises(InputError, match="unknown synthetic benchmark 'xray'"):
        generate("xray", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _tally(out_dir, *, seed: int = 0, rows: int = 3, label: str = "x"):
    """A registered writer needs nothing more than typed keyword-only knobs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"label": [label] * rows, "seed": seed}).to_csv(out_dir / "tally.csv", index=False)
    return out_dir


def test_a_writer_signature_is_its_config(tmp_path):
    entry = Generator(f"{__name__}:_tally", "Tally: a table.", "runs/tally")
    assert entry.knobs()().model_dump() == {"seed": 0, "rows": 3, "label": "x"}
    entry.run(tmp_path / "t", rows=2, seed=4)
    assert pd.read_csv(tmp_path / "t" / "tally.csv").to_dict("list") == {"label": ["x", "x"], "seed": [4, 4]}


def _write_manifest(root):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "sample_id": ["a", "b"],
            "path": ["a.png", "b.png"],
            "label": [0, 1],
            "split": ["train", "test"],
            "patient_id": ["p1", "p2"],
            "race": ["white", "black"],
            "age": [30, 70],
            "site": ["torso", "head"],
        }
    ).to_csv(root / "manifest.csv", index=False)
    return root


def _write_nih(root):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_nih import _write

    root.mkdir(parents=True, exist_ok=True)
    _write(root)
    return root


def _write_isic2019(root):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_isic import write_isic2019

    root.mkdir(parents=True, exist_ok=True)
    write_isic2019(root, images=False)
    return root


WRITERS = {
    "manifest": _write_manifest,
    "chexpert": lambda root: make_chexpert(root, n_patients=24, demographics=False),
    "mimic_cxr": lambda root: make_mimic_cxr(root, n_subjects=16),
    "nih": _write_nih,
    "isic2019": _write_isic2019,
    "isic2020": lambda root: make_isic2020(root, n_patients=40),
    "fitzpatrick17k": lambda root: make_fitzpatrick17k(root, n_images=60),
    "synthskin": lambda root: generate_synthskin(
        root, image_size=16, n_train=40, n_val=8, n_external=8, n_test=8, n_ood=8
    ),
}


def test_every_classification_dataset_has_defaults_its_loader_fulfils(tmp_path):
    assert set(WRITERS) == set(dataset_names("classification"))
    for name, write in WRITERS.items():
        defaults = dataset_defaults(name)
        assert defaults["arch"] in ARCHITECTURES, name
        assert defaults["channels"] in (1, 3) and defaults["image_size"] >= 8, name
        df = load_dataset(name, write(tmp_path / name))
        attributes = defaults.get("attributes", attribute_columns(df))
        assert attributes, name
        for attribute in attributes:
            assert attribute in df.columns, (name, attribute)
            unknown = df[attribute].astype(str).isin(["unknown", "-1", "nan"])
            assert not unknown.all(), (name, attribute)  # the loader fills it, not only with unknown
    assert "attributes" not in dataset_defaults("manifest")
    assert attribute_columns(load_dataset("manifest", tmp_path / "manifest")) == ["age_bin", "race"]


def test_defaults_per_modality_and_copies():
    chest = [dataset_defaults(n) for n in ("chexpert", "mimic_cxr", "nih")]
    assert {(d["image_size"], d["channels"], d["arch"]) for d in chest} == {(224, 1, "densenet121")}
    skin = [dataset_defaults(n) for n in ("fitzpatrick17k", "isic2019", "isic2020")]
    assert {(d["image_size"], d["channels"], d["arch"]) for d in skin} == {(224, 3, "resnet18")}
    assert (
        dataset_defaults("synthskin")["image_size"] == 32
        and dataset_defaults("synthskin")["arch"] == "tiny_cnn"
    )
    assert dataset_defaults("fitzpatrick17k")["attributes"] == ["skin_tone", "fitzpatrick"]
    assert "race" not in dataset_defaults("chexpert")["attributes"]  # only with the demographics file
    mine = dataset_defaults("chexpert")
    mine["attributes"].append("race")
    mine["arch"] = "tiny_cnn"
    assert dataset_defaults("chexpert") == {
        "attributes": ["sex", "age_bin"],
        "image_size": 224,
        "channels": 1,
        "arch": "densenet121",
    }
    assert dataset_defaults("waterbirds") == {} and Dataset("group", "m:f").defaults == {}
    with pytest.raises(InputError, match="unknown dataset 'chexpret'"):
        dataset_defaults("chexpret")
