"""``trustmed train`` defaults come from the dataset's registry entry, not from SynthSkin."""

from __future__ import annotations

import pytest

from trustmed.data import dataset_defaults
from trustmed.train.classifier import TrainConfig


@pytest.mark.parametrize("name", ["chexpert", "mimic_cxr", "isic2020", "fitzpatrick17k", "synthskin"])
def test_image_size_channels_attributes_and_arch_follow_the_dataset(name):
    cfg = TrainConfig(data={"dataset": name, "root": "somewhere"})
    defaults = dataset_defaults(name)
    assert cfg.data.image_size == defaults["image_size"] == cfg.model.image_size
    assert cfg.data.channels == defaults["channels"] == cfg.model.in_channels
    assert cfg.data.attributes == defaults["attributes"]
    assert cfg.model.arch == defaults["arch"]


def test_chest_xray_defaults_are_not_synthskins():
    cfg = TrainConfig(data={"dataset": "chexpert", "root": "x"})
    assert (cfg.model.arch, cfg.data.image_size, cfg.data.channels) == ("densenet121", 224, 1)
    assert cfg.data.attributes == ["sex", "age_bin"]
    plain = TrainConfig()
    assert (plain.data.dataset, plain.model.arch, plain.data.image_size) == ("synthskin", "tiny_cnn", 32)


def test_what_the_user_sets_wins():
    cfg = TrainConfig(
        data={"dataset": "chexpert", "root": "x", "image_size": 64, "attributes": ["sex"]},
        model={"arch": "resnet18", "width": 8},
    )
    assert (cfg.model.arch, cfg.model.image_size, cfg.data.attributes) == ("resnet18", 64, ["sex"])
    only_width = TrainConfig(data={"dataset": "isic2020", "root": "x"}, model={"width": 8})
    assert only_width.model.arch == "resnet18" and only_width.model.width == 8


def test_a_manifest_has_no_fixed_attributes():
    cfg = TrainConfig(data={"dataset": "manifest", "root": "m.csv"})
    assert cfg.data.attributes is None  # the manifest's attribute columns, read at training time
