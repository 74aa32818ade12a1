"""The one train-and-score path: patient-clustered metrics, and numbers that do not depend on run order."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trustmed.config import apply_values
from trustmed.distill.run import DistillConfig, prepare_data, train_and_score
from trustmed.metrics.robustness import robustness_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small manifest dataset (four images per patient) with a spurious group cue."""
    root = tmp_path_factory.mktemp("distill_run")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(120):
        split = ["train", "val", "test"][(i // 4) % 3]
        y = int(rng.integers(0, 2))
        place = y if rng.random() < (0.85 if split == "train" else 0.5) else 1 - y
        pixels = rng.normal(0.3, 0.1, (8, 8, 3))
        pixels[..., 0] += 0.4 * y
        pixels[..., 1] += 0.5 * place
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append({"sample_id": f"s{i}", "path": f"{i}.png", "label": y, "split": split,
                     "patient_id": f"p{i // 4}", "group": f"y={y}&place={place}"})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    cfg = DistillConfig(n_boot=200)
    cfg = apply_values(cfg, {"data.format": "manifest", "data.root": root, "data.image_size": 8,
                             "data.batch_size": 16, "train.epochs": 2, "method": "erm"})  # fmt: skip
    return cfg, prepare_data(cfg, root)


def test_metrics_resample_whole_patients(data):
    torch.set_num_threads(1)
    cfg, prepared = data
    result = train_and_score(cfg, prepared)
    test = result.predictions[result.predictions["split"] == "test"]
    groups, label, pred = test["group"].to_numpy(), test["label"].to_numpy(), test["pred"].to_numpy()
    clustered = robustness_metrics(
        label, pred, groups=groups, patient_ids=test["patient_id"].to_numpy(), n_boot=200, seed=0
    )
    independent = robustness_metrics(label, pred, groups=groups, n_boot=200, seed=0)
    assert result.metrics["test"] == clustered
    assert clustered["acc_avg"]["ci"] != independent["acc_avg"]["ci"]
    assert set(result.metrics) >= {"val", "test", "best_epoch", "student_parameters", "wall_time_s"}


def test_the_same_config_gives_the_same_numbers_whatever_ran_before(data):
    torch.set_num_threads(1)
    cfg, prepared = data
    first = train_and_score(cfg, prepared)
    train_and_score(apply_values(cfg, {"method": "groupdro", "seed": 5}), prepared)
    again = train_and_score(cfg, prepared)
    assert again.distiller.history_ == first.distiller.history_
    assert again.metrics["test"] == first.metrics["test"]


def test_the_student_can_be_a_user_module_started_from_pretrained_weights(tmp_path):
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from trustmed.distill.run import DistillConfig, _build_student
    from trustmed.errors import InputError
    from trustmed.models import ModelSpec, build_model

    data = SimpleNamespace(n_classes=2, image_size=8, channels=3)
    pretrained = build_model(ModelSpec(arch="tiny_cnn", width=4, n_outputs=2, image_size=8))
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, tmp_path / "start.safetensors")
    cfg = DistillConfig(
        student={"arch": "tiny_cnn", "width": 4, "init_weights": str(tmp_path / "start.safetensors")}
    )
    student, spec = _build_student(cfg, data)
    assert spec.init_weights is not None
    for key, value in pretrained.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key
    user = DistillConfig(student={"factory": "torch.nn:Sequential", "head": "fc"})
    with pytest.raises(InputError, match="no layer 'fc'"):
        _build_student(user, data)
