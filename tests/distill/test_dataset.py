"""``data.format: dataset``: distil on a registered dataset (default: the teacher's); groups from columns."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import trustmed.data
from trustmed.config import apply_values, load_config
from trustmed.distill.run import DistillConfig, _default_attributes, prepare_data, run_distill
from trustmed.errors import InputError
from trustmed.models import ModelSpec
from trustmed.train.classifier import DataSection, OptimSection, TrainConfig, train_classifier

SIZES = {"train": 72, "val": 36, "test": 36}
UNKNOWN_EVERY = 9  # every 9th row of train/val/test has skin_tone "unknown"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A manifest-format dataset: label in the red channel, skin tone in the green one; some skin
    tones unknown, some sexes blank, and an external split with a skin tone seen nowhere else."""
    root = tmp_path_factory.mktemp("skin_manifest")
    rng = np.random.default_rng(3)
    rows = []
    for split, n in [*SIZES.items(), ("external", 8)]:
        for i in range(n):
            y, dark = i % 2, (i // 2) % 2
            tone = "unknown" if i % UNKNOWN_EVERY == 0 else "dark" if dark else "light"
            tone = "medium" if split == "external" else tone
            pixels = rng.normal(0.3, 0.08, (8, 8, 3))
            pixels[..., 0] += 0.5 * y
            pixels[..., 1] += 0.3 * dark
            name = f"{split}_{i}"
            Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(root / f"{name}.png")
            sex = "" if i % 7 == 3 else ["female", "male"][i % 3 % 2]
            rows.append({"sample_id": name, "path": f"{name}.png", "label": y, "split": split,
                         "patient_id": f"p_{name}", "skin_tone": tone, "sex": sex})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory):
    """A binary tiny_cnn trained by ``trustmed train``'s function on the dataset (attributes: sex first)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher")
    cfg = TrainConfig(
        data=DataSection(dataset="manifest", root=dataset, image_size=8, batch_size=16, augment=False,
                         attributes=["sex", "skin_tone"]),
        model=ModelSpec(arch="tiny_cnn", width=8),
        optim=OptimSection(epochs=2, lr=3e-3),
        cpu=True,
    )  # fmt: skip
    train_classifier(cfg, out)
    return out


def _cfg(teacher=None, **values):
    method = "groupdistil" if teacher else "erm"
    base = {"data.format": "dataset", "data.batch_size": 16, "train.epochs": 2, "n_boot": 200,
            "student.width": 4, "teacher": teacher, "method": method}  # fmt: skip
    return apply_values(DistillConfig(), {**base, **values})


def _known(split):
    return SIZES[split] - len(range(0, SIZES[split], UNKNOWN_EVERY))


def test_distil_on_the_teachers_dataset_with_groups_from_columns(dataset, teacher, tmp_path, caplog):
    torch.set_num_threads(1)
    out = tmp_path / "student"
    with caplog.at_level("WARNING"):
        result = run_distill(_cfg(teacher, **{"data.group_by": ["skin_tone", "label"]}), out)
    groups = ["dark|0", "dark|1", "light|0", "light|1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups"] == groups
    assert metrics["data"]["dataset"] == "manifest" and metrics["data"]["root"] == str(dataset)
    assert metrics["data"]["excluded_unknown"] == {s: SIZES[s] - _known(s) for s in SIZES}
    assert metrics["data"]["unused_splits"] == {"external": 8}
    assert "left out of the groups" in caplog.text and "include_unknown" in caplog.text
    # unknown rows and the external split are neither trained on nor scored
    assert sum(metrics["train_group_counts"].values()) == _known("train")
    for split in ("val", "test"):
        assert sum(metrics[split][f"count_group:{g}"] for g in groups) == _known(split)
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"}
    assert set(predictions["skin_tone"]) == {"light", "dark"}
    assert (predictions["group"] == predictions["skin_tone"] + "|" + predictions["label"].astype(str)).all()
    # the image size follows the teacher; the student's model.json records the data it was trained on
    assert result.spec.image_size == 8 and metrics["teacher_parameters"] > metrics["student_parameters"]
    data = json.loads((out / "model.json").read_text())["metadata"]["config"]["data"]
    assert (data["dataset"], data["root"], data["group_by"]) == (
        "manifest",
        str(dataset),
        ["skin_tone", "label"],
    )
    # so the student can teach in turn: its dataset and group_by are the defaults
    assert prepare_data(_cfg(out), tmp_path / "next").data_config.group_by == ["skin_tone", "label"]


def test_group_by_defaults_to_the_teachers_first_attribute_and_the_label(dataset, teacher, tmp_path):
    prepared = prepare_data(_cfg(teacher), tmp_path)
    assert prepared.data_config.group_by == ["sex", "label"]
    assert prepared.group_names == ["female|0", "female|1", "male|0", "male|1"]
    assert prepared.group_counts.sum() < SIZES["train"]  # blank sexes left out
    kept = prepare_data(_cfg(teacher, **{"data.include_unknown": True}), tmp_path)
    assert kept.group_names == ["female|0", "female|1", "male|0", "male|1", "unknown|0", "unknown|1"]
    assert kept.group_counts.sum() == SIZES["train"]
    assert kept.summary["excluded_unknown"] == {}


def test_a_blank_value_is_unknown_and_an_explicit_dataset_needs_no_teacher(dataset, tmp_path):
    prepared = prepare_data(_cfg(**{"data.dataset": "manifest", "data.root": dataset,
                                    "data.group_by": ["sex"]}), tmp_path)  # fmt: skip
    assert prepared.group_names == ["female", "male"]
    manifest = pd.read_csv(dataset / "manifest.csv")
    blank = manifest["sex"].isna() & manifest["split"].isin(list(SIZES))
    assert prepared.summary["excluded_unknown"] == {
        s: int((blank & (manifest["split"] == s)).sum()) for s in SIZES
    }
    assert len(prepared.manifest) == sum(SIZES.values()) - int(blank.sum())


def test_group_by_naming_a_missing_column_lists_the_columns(dataset, teacher, tmp_path):
    with pytest.raises(InputError) as err:
        prepare_data(_cfg(teacher, **{"data.group_by": ["race", "label", "site"]}), tmp_path)
    message = str(err.value)
    assert "'race', 'site' not in dataset 'manifest'" in message
    assert "columns: sample_id, path, label, split, patient_id, skin_tone, sex" in message
    assert "\n" not in message


def test_a_dataset_without_a_val_split_names_the_splits_it_has(dataset, tmp_path):
    root = tmp_path / "no_val"
    root.mkdir()
    manifest = pd.read_csv(dataset / "manifest.csv")
    manifest["path"] = [str(dataset / p) for p in manifest["path"]]
    manifest["split"] = manifest["split"].replace({"val": "tune"})
    manifest.to_csv(root / "manifest.csv", index=False)
    cfg = _cfg(**{"data.dataset": "manifest", "data.root": root, "data.group_by": ["skin_tone", "label"]})
    with pytest.raises(InputError, match=r"has no 'val' split \(splits: external, test, train, tune\)"):
        prepare_data(cfg, tmp_path)


def test_bad_dataset_settings_are_one_clear_error(dataset, tmp_path):
    with pytest.raises(InputError, match="needs data.dataset .* no teacher is given"):
        prepare_data(_cfg(), tmp_path)
    with pytest.raises(InputError, match="data.root is required for data.dataset='manifest'"):
        prepare_data(_cfg(**{"data.dataset": "manifest"}), tmp_path)
    with pytest.raises(InputError, match="'waterbirds' is a group dataset.*use data.format=waterbirds"):
        prepare_data(_cfg(**{"data.dataset": "waterbirds", "data.root": dataset}), tmp_path)
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        prepare_data(_cfg(**{"data.dataset": "nope", "data.root": dataset}), tmp_path)
    manifest_cfg = _cfg(**{"data.format": "manifest", "data.root": dataset, "data.group_by": ["sex"]})
    with pytest.raises(InputError, match="data.group_by applies only to data.format=dataset"):
        prepare_data(manifest_cfg, tmp_path)


def test_without_a_teacher_group_by_defaults_to_the_first_attribute_column(dataset, tmp_path):
    prepared = prepare_data(_cfg(**{"data.dataset": "manifest", "data.root": dataset}), tmp_path)
    assert prepared.data_config.group_by == ["skin_tone", "label"]
    assert prepared.group_names == ["dark|0", "dark|1", "light|0", "light|1"]


def test_default_attributes_use_dataset_defaults_when_it_exists(monkeypatch):
    monkeypatch.delattr(trustmed.data, "dataset_defaults", raising=False)
    assert _default_attributes("chexpert") == ["sex"]
    assert _default_attributes("mimic_cxr") == ["sex"]
    assert _default_attributes("fitzpatrick17k") == ["skin_tone"]
    fixed = {"chexpert": {"attributes": ["age_bin", "sex"]}, "manifest": {"image_size": 224}}
    monkeypatch.setattr(trustmed.data, "dataset_defaults", fixed.__getitem__, raising=False)
    assert _default_attributes("chexpert") == ["age_bin", "sex"]
    assert _default_attributes("manifest") is None  # then the loaded manifest's attribute columns


def test_a_training_group_absent_from_the_test_split_is_reported_not_fatal(dataset, tmp_path):
    torch.set_num_threads(1)
    root = tmp_path / "no_dark_positive_in_test"
    root.mkdir()
    manifest = pd.read_csv(dataset / "manifest.csv")
    manifest["path"] = [str(dataset / p) for p in manifest["path"]]
    dropped = (manifest["split"] == "test") & (manifest["skin_tone"] == "dark") & (manifest["label"] == 1)
    manifest[~dropped].to_csv(root / "manifest.csv", index=False)
    out = tmp_path / "erm"
    cfg = _cfg(**{"data.dataset": "manifest", "data.root": root, "data.group_by": ["skin_tone", "label"]})
    run_distill(apply_values(cfg, {"train.epochs": 1}), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "dark|1" in metrics["groups"] and "count_group:dark|1" not in metrics["test"]
    assert metrics["val"]["count_group:dark|1"] > 0
    assert "dark|1" in (out / "report.html").read_text()


def test_the_distill_examples_are_valid_configs():
    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("distill_*.yaml"))
    configs = {path.stem: load_config(DistillConfig, path) for path in examples}
    assert {"distill_coloreddigits", "distill_synthskin", "distill_waterbirds"} <= set(configs)
    synthskin = configs["distill_synthskin"].data
    assert (synthskin.format, synthskin.dataset, synthskin.group_by) == (
        "dataset",
        None,
        ["skin_tone", "label"],
    )
