import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from trustmed.distill.losses import GroupDistilLoss
from trustmed.distill.trainer import (
    GroupDataset,
    GroupDistiller,
    encode_groups,
    group_accuracy,
    plot_group_weights,
)
from trustmed.errors import InputError
from trustmed.models import ModelSpec, build_model
from trustmed.utils import seed_everything


class _Items(torch.utils.data.Dataset):
    """Items as ImageDataset returns them: image, label, index."""

    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=gen)
        self.place = torch.where(torch.rand(n, generator=gen) < 0.8, self.y, 1 - self.y)
        self.x = torch.randn(n, 3, 8, 8, generator=gen) * 0.3
        self.x[:, 0] += self.y[:, None, None] * 1.0  # the real signal
        self.x[:, 1] += self.place[:, None, None] * 2.0  # the shortcut

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i].float(), "index": torch.tensor(i)}

    @property
    def groups(self):
        return (2 * self.y + self.place).numpy()


def _loaders(seed=0):
    train, val = _Items(96, seed), _Items(64, seed + 1)
    return (
        DataLoader(
            GroupDataset(train, train.groups),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        ),
        DataLoader(GroupDataset(val, val.groups), batch_size=64),
    )


def _model(width=4):
    return build_model(ModelSpec(arch="tiny_cnn", width=width, n_outputs=2, image_size=8))


def test_selects_the_best_validation_worst_group_epoch():
    seed_everything(0)
    train, val = _loaders()
    distiller = GroupDistiller("groupdro", n_groups=4, epochs=4, eta=0.1).fit(_model(), train, val)
    scores = [row["val_acc_wg"] for row in distiller.history_]
    assert distiller.best_epoch_ == int(np.argmax(scores)) + 1
    again = distiller.evaluate(distiller.model_, val)
    assert again["acc_wg"] == pytest.approx(max(scores))
    weights = distiller.group_weights_
    assert weights.shape == (5, 4)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert not np.allclose(weights[-1], 0.25)  # Group DRO moved the weights
    np.testing.assert_allclose(weights[-1], distiller.loss_.group_weights.numpy(), atol=1e-6)


def test_cached_teacher_equals_teacher_on_every_batch():
    seed_everything(0)
    teacher = _model(8)
    train, val = _loaders()
    runs = []
    for cache in (True, False):
        seed_everything(1)
        d = GroupDistiller("groupdistil", n_groups=4, epochs=2, cache_teacher=cache)
        runs.append(d.fit(_model(), train, val, teacher=teacher))
    np.testing.assert_allclose(runs[0].group_weights_, runs[1].group_weights_, atol=1e-6)
    assert runs[0].history_[-1]["train_loss"] == pytest.approx(runs[1].history_[-1]["train_loss"], rel=1e-5)


def test_resume_restores_group_weights(tmp_path):
    teacher = _model(8)
    full = None
    for epochs, resume in ((3, False), (2, False), (3, True)):
        seed_everything(2)
        train, val = _loaders(seed=2)
        d = GroupDistiller("groupdistil", n_groups=4, epochs=epochs, eta=0.2)
        ckpt = None if full is None else tmp_path / "ckpt"
        d.fit(_model(), train, val, teacher=teacher, checkpoint_dir=ckpt, resume=resume)
        if full is None:
            full = d
    assert d.fit_result_.epochs == 3
    np.testing.assert_allclose(d.group_weights_, full.group_weights_, atol=1e-5)
    np.testing.assert_allclose(d.loss_.group_weights.numpy(), full.loss_.group_weights.numpy(), atol=1e-5)


def test_distillation_methods_need_a_teacher():
    train, val = _loaders()
    for method in ("groupdistil", "kd", "kd_sample"):
        with pytest.raises(InputError, match="needs a teacher"):
            GroupDistiller(method, n_groups=4, epochs=1).fit(_model(), train, val)
    with pytest.raises(InputError, match="unknown method"):
        GroupDistiller("dro", n_groups=4, epochs=1).fit(_model(), train, val)


def test_encode_groups_rejects_groups_absent_from_training():
    df = pd.DataFrame({"split": ["train", "train", "test"], "group": ["a", "b", "a"]})
    codes, names = encode_groups(df)
    assert names == ["a", "b"] and codes.tolist() == [0, 1, 0]
    df.loc[2, "group"] = "c"
    with pytest.raises(InputError, match="group 'c' occurs outside training"):
        encode_groups(df)
    with pytest.raises(InputError, match="group column 'site' not found"):
        encode_groups(df, "site")


def test_group_accuracy_and_plot(tmp_path):
    acc = group_accuracy(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]), np.array([0, 0, 2, 2]), 3)
    assert acc == {"acc_avg": 0.5, "acc_wg": 0.5, "acc_group:0": 0.5, "acc_group:2": 0.5}
    png = plot_group_weights(np.full((3, 2), 0.5), ["a", "b"], tmp_path / "q.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_loss_is_checkpointable_state():
    loss = GroupDistilLoss(3)
    assert set(loss.state_dict()) == {"adjust", "log_q"}


def test_losses_and_trainer_default_to_the_command_settings():
    """One owner per parameter: the library's defaults are those of ``trustmed distill``."""
    from trustmed.distill import GroupDistilLoss, KDLoss
    from trustmed.distill.run import DistillConfig

    cfg = DistillConfig()
    d = GroupDistiller(n_groups=2)
    assert (d.temperature, d.alpha, d.eta, d.adjustment) == tuple(cfg.loss.model_dump().values())
    assert (d.epochs, d.lr, d.weight_decay) == (cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay)
    kd, group = KDLoss(), GroupDistilLoss(2)
    assert (kd.temperature, kd.alpha) == (cfg.loss.temperature, cfg.loss.alpha)
    assert (group.temperature, group.alpha, group.eta) == (cfg.loss.temperature, cfg.loss.alpha, cfg.loss.eta)


def test_methods_agree_with_the_command_and_kd_is_group_uniform():
    """``kd`` is GroupDistil's loss with eta = 0 (METHODS.md's baseline); ``kd_sample`` is per-sample KD."""
    from typing import get_args

    from trustmed.distill import GroupDistilLoss, KDLoss
    from trustmed.distill.run import DistillConfig
    from trustmed.distill.trainer import METHODS, build_loss

    assert set(get_args(DistillConfig.model_fields["method"].annotation)) == set(METHODS)
    kd = build_loss("kd", 3)
    assert isinstance(kd, GroupDistilLoss) and kd.eta == 0.0
    assert isinstance(build_loss("kd_sample", 3), KDLoss)
