import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from trustmed.cli import app
from trustmed.models import ModelSpec, build_model, save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small manifest dataset: label in the red channel, a spurious group cue in the green one."""
    root = tmp_path_factory.mktemp("distill_data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(96):
        split = ["train", "val", "test"][i % 3]
        y = int(rng.integers(0, 2))
        agree = 0.85 if split == "train" else 0.5
        place = y if rng.random() < agree else 1 - y
        pixels = rng.normal(0.3, 0.1, (8, 8, 3))
        pixels[..., 0] += 0.4 * y
        pixels[..., 1] += 0.5 * place
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append(
            {
                "sample_id": f"s{i}",
                "path": f"{i}.png",
                "label": y,
                "split": split,
                "patient_id": f"p{i}",
                "group": f"y={y}&place={place}",
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def _args(root, out, *extra):
    return [
        "distill",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "data.format=manifest",
        "--set",
        f"data.root={root}",
        "--set",
        "data.image_size=8",
        "--set",
        "train.epochs=2",
        "--set",
        "n_boot=200",
        "--set",
        "data.batch_size=16",
        *extra,
    ]


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    result = runner.invoke(app, _args(dataset, out, "--method", "erm", "--student-width", "8"))
    assert result.exit_code == 0, result.output
    return out


def test_groupdistil_end_to_end(dataset, teacher, tmp_path):
    out = tmp_path / "student"
    result = runner.invoke(
        app, _args(dataset, out, "--method", "groupdistil", "--teacher", str(teacher), "--student-width", "4")
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    groups = metrics["groups"]
    assert len(groups) == 4
    for name in groups:
        assert test[f"count_group:{name}"] > 0
        lo, hi = test[f"acc_group:{name}"]["ci"]
        assert lo <= test[f"acc_group:{name}"]["value"] <= hi
    assert test["acc_wg"]["value"] == min(test[f"acc_group:{n}"]["value"] for n in groups)
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    weights = pd.read_csv(out / "group_weights.csv")
    assert len(weights) == 3 and np.allclose(weights[groups].sum(axis=1), 1.0)
    history = pd.read_csv(out / "history.csv")
    assert metrics["best_epoch"] == int(history["val_acc_wg"].idxmax()) + 1
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"} and len(predictions) == 64
    assert {"pred", "score", "group", "patient_id"} <= set(predictions.columns)
    for name in ("model.safetensors", "model.json", "report.html", "group_weights.png"):
        assert (out / name).is_file()


def test_resume_continues_the_history(dataset, tmp_path):
    out = tmp_path / "dro"
    first = runner.invoke(app, [*_args(dataset, out, "--method", "groupdro"), "--set", "train.epochs=1"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*_args(dataset, out, "--method", "groupdro", "--resume")])
    assert again.exit_code == 0, again.output
    assert len(pd.read_csv(out / "history.csv")) == 2


def _assert_clean_failure(result, out, pattern):
    assert result.exit_code == 2, result.output
    assert pattern in result.output
    assert len([line for line in result.output.strip().splitlines() if line.startswith("error:")]) == 1
    assert not (out / "metrics.json").exists()


def test_teacher_with_wrong_number_of_classes(dataset, tmp_path):
    bad = tmp_path / "bad_teacher"
    spec = ModelSpec(arch="tiny_cnn", width=4, n_outputs=3, image_size=8)
    save_checkpoint(build_model(spec), spec, bad)
    out = tmp_path / "out"
    result = runner.invoke(app, _args(dataset, out, "--method", "kd", "--teacher", str(bad)))
    _assert_clean_failure(result, out, "teacher has 3 output(s) but the data has 2 classes")


def test_group_absent_from_training(dataset, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    manifest = pd.read_csv(dataset / "manifest.csv")
    manifest["path"] = [str(dataset / p) for p in manifest["path"]]
    manifest.loc[manifest["split"] == "test", "group"] = "site=new"
    manifest.to_csv(root / "manifest.csv", index=False)
    out = tmp_path / "out"
    result = runner.invoke(app, _args(root, out, "--method", "erm"))
    _assert_clean_failure(result, out, "group 'site=new' occurs outside training")


def test_student_that_does_not_build(dataset, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, _args(dataset, out, "--method", "erm", "--student-arch", "vgg99"))
    _assert_clean_failure(result, out, "unknown architecture 'vgg99'")
    result = runner.invoke(app, _args(dataset, out, "--method", "erm", "--student-width", "0"))
    _assert_clean_failure(result, out, "student config does not build")
    result = runner.invoke(app, _args(dataset, out, "--method", "kd"))
    _assert_clean_failure(result, out, "needs --teacher")


@pytest.fixture(scope="module")
def synthskin_teacher(tmp_path_factory):
    """SynthSkin with some skin types made unknown (−1), and a teacher trained on it by ``trustmed train``."""
    from trustmed.data.synth.skin import generate_synthskin

    root = tmp_path_factory.mktemp("synthskin")
    sizes = {"n_train": 64, "n_val": 32, "n_external": 8, "n_test": 32, "n_ood": 8}
    generate_synthskin(root, seed=0, image_size=16, train_dark_malignant_ratio=1.0, **sizes)
    table = pd.read_csv(root / "fitzpatrick17k.csv")
    split = table["md5hash"].map(pd.read_csv(root / "synthskin_meta.csv").set_index("md5hash")["split"])
    unknown = np.arange(len(table)) % 8 == 5
    table.loc[unknown, "fitzpatrick_scale"] = -1
    table.to_csv(root / "fitzpatrick17k.csv", index=False)
    teacher = tmp_path_factory.mktemp("synthskin_teacher")
    sets = {"data.dataset": "synthskin", "data.root": root, "data.image_size": 16, "data.augment": "false",
            "data.batch_size": 16, "data.attributes": "[skin_tone]", "model.width": 4,
            "optim.epochs": 1}  # fmt: skip
    sets = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    result = runner.invoke(app, ["train", "--out", str(teacher), "--quiet", *sets])
    assert result.exit_code == 0, result.output
    return teacher, split[unknown].value_counts().to_dict()


def _dataset_args(teacher, out, *extra):
    return ["distill", "--out", str(out), "--quiet", "--teacher", str(teacher), "--student-width", "4",
            "--set", "data.format=dataset", "--set", "train.epochs=1", "--set", "n_boot=200",
            "--set", "data.batch_size=16", *extra]  # fmt: skip


def test_distil_on_the_teachers_dataset_with_groups_from_attributes(synthskin_teacher, tmp_path):
    teacher, unknown = synthskin_teacher
    out = tmp_path / "student"
    result = runner.invoke(app, _dataset_args(teacher, out, "--set", "data.group_by=[skin_tone,label]"))
    assert result.exit_code == 0, result.output
    assert "rows with a missing or unknown skin_tone left out of the groups" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups"] == ["dark|0", "dark|1", "light|0", "light|1"]
    assert metrics["data"]["dataset"] == "synthskin"
    assert metrics["data"]["excluded_unknown"] == {s: unknown.get(s, 0) for s in ("train", "val", "test")}
    assert metrics["data"]["unused_splits"] == {"external": 8, "ood": 8}
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 64 - unknown.get("val", 0) - unknown.get("test", 0)
    assert set(predictions["skin_tone"]) == {"light", "dark"}
    assert json.loads((out / "model.json").read_text())["spec"]["image_size"] == 16  # the teacher's


def test_group_by_a_missing_column_is_one_error(synthskin_teacher, tmp_path):
    teacher, _ = synthskin_teacher
    out = tmp_path / "out"
    result = runner.invoke(app, _dataset_args(teacher, out, "--set", "data.group_by=[race,label]"))
    _assert_clean_failure(result, out, "'race' not in dataset 'synthskin'")
    assert "columns: sample_id, path, label, split, patient_id" in result.output
