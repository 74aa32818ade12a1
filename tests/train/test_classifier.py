"""ERM training: outputs, checkpoint round-trip, determinism and exact resume (tiny SynthSkin)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import trustmed.train.classifier as classifier
from trustmed.config import load_config
from trustmed.data.synth.skin import generate_synthskin
from trustmed.errors import InputError
from trustmed.models import load_checkpoint
from trustmed.train.classifier import (
    TrainConfig,
    predict_scores,
    predictions_for_checkpoint,
    train_classifier,
)

SIZES = {"image_size": 16, "n_train": 160, "n_val": 48, "n_external": 16, "n_test": 32, "n_ood": 16}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate_synthskin(tmp_path_factory.mktemp("synthskin"), seed=0, **SIZES)


def _config(root, **extra) -> TrainConfig:
    sets = [
        f"data.root={root}",
        "data.image_size=16",
        "data.batch_size=32",
        "model.width=4",
        "optim.epochs=3",
    ]
    return load_config(TrainConfig, None, sets + [f"{k}={v}" for k, v in extra.items()])


@pytest.fixture(scope="module")
def first_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    return train_classifier(_config(data_root), out), out


def test_outputs(first_run):
    result, out = first_run
    names = {p.name for p in out.iterdir()}
    expected = {f"predictions_{s}.csv" for s in ("train", "val", "external", "test", "ood")}
    assert {"model.safetensors", "model.json", "history.json", "checkpoints"} | expected <= names
    test = pd.read_csv(out / "predictions_test.csv")
    assert list(test.columns) == [
        "sample_id",
        "label",
        "score",
        "skin_tone",
        "fitzpatrick",
        "sex",
        "age_bin",
        "patient_id",
        "split",
    ]
    assert (
        len(test) == SIZES["n_test"] and test["score"].between(0, 1).all() and (test["split"] == "test").all()
    )
    meta = json.loads((out / "model.json").read_text())["metadata"]
    assert meta["training"]["epochs"] == 3 and meta["training"]["n_train"] == SIZES["n_train"]
    assert meta["training"]["samples_seen"] == 3 * SIZES["n_train"]
    assert meta["config"]["optim"]["epochs"] == 3
    history = json.loads((out / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    best = max(history, key=lambda h: h["val_auc"])
    assert result.best_epoch == best["epoch"] and result.val_auc == pytest.approx(best["val_auc"])


def test_checkpoint_round_trip(first_run, data_root):
    result, out = first_run
    model, spec, _ = load_checkpoint(out)
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    again = predictions_for_checkpoint(out, dataset="synthskin", root=data_root, split="test")
    saved = pd.read_csv(out / "predictions_test.csv")
    assert (again["sample_id"] == saved["sample_id"]).all()
    np.testing.assert_allclose(again["score"], saved["score"], atol=1e-6)
    from trustmed.data import load_dataset

    val = load_dataset("synthskin", data_root).query("split == 'val'")
    scores = predict_scores(model, val, data_root, image_size=spec.image_size)
    np.testing.assert_allclose(scores, pd.read_csv(out / "predictions_val.csv")["score"], atol=1e-6)
    with pytest.raises(InputError, match="split 'nope' not in dataset"):
        predictions_for_checkpoint(out, dataset="synthskin", root=data_root, split="nope")


def test_same_seed_same_metrics(first_run, data_root, tmp_path):
    result, out = first_run
    again = train_classifier(_config(data_root), tmp_path)
    assert again.fit.history == result.fit.history
    assert (tmp_path / "predictions_test.csv").read_bytes() == (out / "predictions_test.csv").read_bytes()


def test_resume_after_crash_gives_same_weights(first_run, data_root, tmp_path, monkeypatch):
    _, out = first_run
    calls = {"n": 0}
    real_auc = classifier._auc

    def crash_on_second_epoch(labels, scores):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_auc(labels, scores)

    monkeypatch.setattr(classifier, "_auc", crash_on_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_classifier(_config(data_root), tmp_path)
    assert json.loads((tmp_path / "checkpoints" / "loop_state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(classifier, "_auc", real_auc)
    resumed = train_classifier(_config(data_root), tmp_path, resume=True)
    assert resumed.fit.epochs == 3
    final, reference = load_file(tmp_path / "model.safetensors"), load_file(out / "model.safetensors")
    for key in reference:
        assert torch.equal(final[key], reference[key]), key
    with pytest.raises(InputError, match="different config"):
        train_classifier(_config(data_root, **{"optim.lr": 0.01}), tmp_path, resume=True)


def test_bad_input(data_root, tmp_path):
    with pytest.raises(InputError, match="data.attributes: race not in dataset"):
        train_classifier(_config(data_root, **{"data.attributes": "[race]"}), tmp_path / "a")
    with pytest.raises(InputError, match="validation split 'holdout' is empty"):
        train_classifier(_config(data_root, **{"data.val_split": "holdout"}), tmp_path / "b")
    with pytest.raises(InputError, match="model.image_size=32 disagrees with data.image_size=16"):
        _config(data_root, **{"model.image_size": 32})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
