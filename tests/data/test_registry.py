"""The dataset registry (every kind looked up by name) and the synthetic-benchmark registry."""

from __future__ import annotations

import inspect

import pandas as pd
import pytest

from trustmed.data import DATASETS, KINDS, dataset_kind, dataset_loader, dataset_names, load_dataset
from trustmed.data.mscxr import GROUNDING_COLUMNS
from trustmed.data.synth import GENERATORS, Generator, generate
from trustmed.data.synth.cxr import make_synthcxr, make_synthcxr_vindr
from trustmed.data.synth.digits import make_colored_digits
from trustmed.errors import InputError


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
