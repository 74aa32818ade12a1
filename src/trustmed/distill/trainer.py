"""Training students (and teachers) with ERM, Group DRO, KD (group-uniform or per-sample) or GroupDistil.

:class:`GroupDistiller` trains a classifier through the shared loop :func:`trustmed.train.fit` and
keeps the epoch with the best **validation worst-group accuracy** (Sagawa et al., arXiv 1911.08731,
select Group DRO models the same way; without it the last epoch of a robust method can be much
worse). With ``method="groupdistil"`` the loss is :class:`~trustmed.distill.losses.GroupDistilLoss`
(Vilouras et al., "Group Distributionally Robust Knowledge Distillation", MLMI 2023, arXiv
2311.00476); its group weights are recorded after every epoch for plotting and are saved in
checkpoints, so ``resume=True`` continues with the same weights.

Batches are dicts with ``image``, ``label`` and ``group`` (integer group id); :class:`GroupDataset`
adds ``group`` to any dataset whose items carry their manifest ``index`` (as
:class:`trustmed.data.images.ImageDataset` does).

>>> import torch
>>> from torch.utils.data import DataLoader
>>> x = torch.randn(64, 3, 8, 8); y = (x[:, 0].mean((1, 2)) > 0).long(); g = y.clone()
>>> data = [{"image": a, "label": b, "group": c} for a, b, c in zip(x, y, g)]
>>> from trustmed.models import ModelSpec, build_model
>>> model = build_model(ModelSpec(arch="tiny_cnn", width=4, n_outputs=2, image_size=8))
>>> distiller = GroupDistiller("groupdro", n_groups=2, epochs=2)
>>> fitted = distiller.fit(model, DataLoader(data, 16), DataLoader(data, 64))
>>> fitted.group_weights_.shape, fitted.best_epoch_ in (1, 2)
((3, 2), True)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from trustmed.distill.config import LossConfig, TrainConfig
from trustmed.distill.losses import GroupDistilLoss, GroupDROLoss, KDLoss
from trustmed.errors import InputError
from trustmed.train import FitResult, fit, make_accelerator, predict

__all__ = [
    "METHODS",
    "GroupDataset",
    "GroupDistiller",
    "build_loss",
    "encode_groups",
    "group_accuracy",
    "make_group_loaders",
    "plot_group_weights",
    "teacher_logits",
]

# Defaults of the losses and of training: those of ``trustmed distill`` (one owner).
_LOSS, _TRAIN = LossConfig(), TrainConfig()

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("groupdistil", "kd", "kd_sample", "groupdro", "erm")
"""``kd`` is GroupDistil's loss with ``eta = 0`` (every group's mean loss, groups weighted equally: the
baseline of the method's design); ``kd_sample`` is vanilla per-sample KD (groups count by their size)."""
_NEEDS_TEACHER = {"groupdistil", "kd", "kd_sample"}


class GroupDataset(Dataset):
    """Add ``group`` (a long tensor) to the dict items of ``base``, looked up by the item's ``index``."""

    def __init__(self, base: Dataset, groups: Sequence[int] | np.ndarray | torch.Tensor):
        self.base = base
        self.groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = dict(self.base[index])
        item["group"] = self.groups[int(item["index"])]
        return item


def encode_groups(
    manifest: pd.DataFrame, column: str = "group", *, train_split: str = "train"
) -> tuple[np.ndarray, list[str]]:
    """Integer group ids for every row and the group names (sorted), defined by the training split.

    A group that occurs outside training but not in it is an :class:`InputError`: a group-robust
    method cannot weight a group it never sees.
    """
    if column not in manifest.columns:
        raise InputError(
            f"group column {column!r} not found; available: {', '.join(map(str, manifest.columns))}"
        )
    values = manifest[column].astype(str)
    train_values = values[manifest["split"] == train_split]
    if train_values.empty:
        raise InputError(
            f"no rows in split {train_split!r}; splits present: {sorted(manifest['split'].unique())}"
        )
    names = sorted(train_values.unique())
    unseen = sorted(set(values) - set(names))
    if unseen:
        raise InputError(
            f"group column {column!r}: group {unseen[0]!r} occurs outside training but not in the "
            f"{train_split!r} split; training groups: {', '.join(names)}"
        )
    lookup = {name: i for i, name in enumerate(names)}
    return values.map(lookup).to_numpy(dtype=np.int64), names


def build_loss(
    method: str, n_groups: int, loss: LossConfig = _LOSS, *, group_counts: Sequence[int] | None = None
) -> nn.Module | None:
    """The loss module of a method with the settings ``loss`` (``None`` for ERM: plain cross-entropy).

    ``kd`` is :class:`GroupDistilLoss` with ``eta = 0``: its group weights stay uniform, so the loss is the
    mean over groups of each group's mean distillation loss; ``kd_sample`` is :class:`KDLoss`.
    """
    t, a, eta, adj = loss.temperature, loss.alpha, loss.eta, loss.adjustment
    if method == "groupdistil":
        return GroupDistilLoss(n_groups, t, a, eta, adj, group_counts=group_counts)
    if method == "kd":
        return GroupDistilLoss(n_groups, t, a, eta=0.0)
    if method == "kd_sample":
        return KDLoss(t, a)
    if method == "groupdro":
        return GroupDROLoss(n_groups, eta, adj, group_counts=group_counts)
    if method == "erm":
        return None
    raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def teacher_logits(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Teacher logits as ``(B, classes)``; a single binary logit ``z`` becomes ``[0, z]`` (same softmax)."""
    with torch.no_grad():
        logits = teacher(images)
    if logits.ndim == 1:
        logits = torch.stack([torch.zeros_like(logits), logits], dim=-1)
    return logits


def group_accuracy(pred: np.ndarray, label: np.ndarray, group: np.ndarray, n_groups: int) -> dict[str, float]:
    """``acc_avg``, ``acc_wg`` and ``acc_group:<id>`` (groups absent from the data are left out)."""
    correct = (pred == label).astype(np.float64)
    counts = np.bincount(group, minlength=n_groups)
    sums = np.bincount(group, weights=correct, minlength=n_groups)
    present = counts > 0
    acc = sums[present] / counts[present]
    out = {"acc_avg": float(correct.mean()), "acc_wg": float(acc.min())}
    out.update({f"acc_group:{g}": float(a) for g, a in zip(np.flatnonzero(present), acc, strict=True)})
    return out


class GroupDistiller:
    """Train a classifier with one of :data:`METHODS`, selecting the epoch on validation worst-group accuracy.

    Parameters
    ----------
    method : ``"groupdistil"``, ``"kd"`` (group-uniform KD), ``"kd_sample"`` (per-sample KD) (these three
        need a teacher), ``"groupdro"`` or ``"erm"``.
    n_groups : number of groups (ids ``0 .. n_groups - 1`` in the batches' ``group``).
    temperature, alpha, eta, adjustment : loss hyper-parameters (see :mod:`trustmed.distill.losses`).
    group_counts : training-set count per group (for ``adjustment``).
    epochs, lr, weight_decay : optimisation (AdamW).
    select : ``"acc_wg"`` (default) or ``"acc_avg"``, the validation key that picks the epoch.
    cache_teacher : compute the frozen teacher's logits on the training set once (items need an
        ``index``); turn off with random augmentation, where the teacher must see each augmented view.

    Attributes
    ----------
    model_ : the trained model (weights of the selected epoch).
    loss_ : the loss module (holds the final group weights for the robust methods).
    history_ : per-epoch rows (``train_loss``, ``val_acc_avg``, ``val_acc_wg``, ``val_acc_group:<id>``).
    group_weights_ : ``(epochs + 1, n_groups)`` array, ``q`` at the start and after every epoch
        (uniform rows for ERM, ``kd_sample`` (which weight samples, not groups) and ``kd`` (``eta = 0``)).
    best_epoch_, fit_result_ : the selected epoch and the loop's :class:`~trustmed.train.FitResult`.
    """

    def __init__(
        self,
        method: str = "groupdistil",
        *,
        n_groups: int,
        temperature: float = _LOSS.temperature,
        alpha: float = _LOSS.alpha,
        eta: float = _LOSS.eta,
        adjustment: float = _LOSS.adjustment,
        group_counts: Sequence[int] | None = None,
        epochs: int = _TRAIN.epochs,
        lr: float = _TRAIN.lr,
        weight_decay: float = _TRAIN.weight_decay,
        select: str = "acc_wg",
        cache_teacher: bool = True,
    ):
        self.method = method
        self.n_groups = n_groups
        self.temperature = temperature
        self.alpha = alpha
        self.eta = eta
        self.adjustment = adjustment
        self.group_counts = group_counts
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.select = select
        self.cache_teacher = cache_teacher

    def _loss_fn(self, loss: nn.Module | None, teacher: nn.Module | None, table: torch.Tensor | None):
        def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = model(batch["image"])
            labels = batch["label"].long()
            if loss is None:
                return F.cross_entropy(logits, labels)
            t_logits = None
            if table is not None:
                t_logits = table[batch["index"]]
            elif teacher is not None:
                t_logits = teacher_logits(teacher, batch["image"])
            return loss(logits, labels, batch["group"], teacher_logits=t_logits)

        return loss_fn

    @staticmethod
    def _teacher_table(teacher: nn.Module, dataset, device: torch.device) -> torch.Tensor | None:
        """The frozen teacher's logits for every training item, by ``index`` (computed once).

        ``None`` when the items carry no ``index``; then the teacher runs on every batch.
        """
        from torch.utils.data import DataLoader

        first = dataset[0]
        if not isinstance(first, dict) or "index" not in first:
            return None
        rows: dict[int, torch.Tensor] = {}
        for batch in DataLoader(dataset, batch_size=256, shuffle=False):
            logits = teacher_logits(teacher, batch["image"].to(device))
            rows.update(zip(batch["index"].tolist(), logits, strict=True))
        table = torch.zeros(max(rows) + 1, next(iter(rows.values())).shape[-1], device=device)
        table[list(rows)] = torch.stack(list(rows.values()))
        return table

    def fit(
        self,
        student: nn.Module,
        train_loader,
        val_loader,
        *,
        teacher: nn.Module | None = None,
        accelerator=None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        fingerprint: str | None = None,
        description: str | None = None,
    ) -> GroupDistiller:
        """Train ``student`` on ``train_loader``; evaluate on ``val_loader`` after every epoch.

        ``checkpoint_dir``, ``resume`` and ``fingerprint`` are those of :func:`trustmed.train.fit`.
        """
        if self.method in _NEEDS_TEACHER and teacher is None:
            raise InputError(f"method {self.method!r} needs a teacher checkpoint")
        if self.select not in ("acc_wg", "acc_avg"):
            raise InputError(f"select must be 'acc_wg' or 'acc_avg', got {self.select!r}")
        settings = LossConfig(
            temperature=self.temperature, alpha=self.alpha, eta=self.eta, adjustment=self.adjustment
        )
        loss = build_loss(self.method, self.n_groups, settings, group_counts=self.group_counts)
        accelerator = accelerator or make_accelerator()
        table = None
        if teacher is not None:
            teacher = teacher.to(accelerator.device).eval()
            if self.cache_teacher:
                table = self._teacher_table(teacher, train_loader.dataset, accelerator.device)
        if loss is not None:
            loss = loss.to(accelerator.device).train()
        uniform = np.full(self.n_groups, 1.0 / self.n_groups)

        def current_weights() -> np.ndarray:
            if isinstance(loss, GroupDistilLoss):
                return loss.group_weights.cpu().numpy().astype(np.float64)
            return uniform

        def evaluate(model: nn.Module) -> dict[str, float]:
            scores = self.evaluate(model, val_loader, accelerator=accelerator)
            row = {f"val_{k}": v for k, v in scores.items()}
            # Kept in the loop's history, so the curve survives a resume.
            row.update({f"group_weight:{g}": float(q) for g, q in enumerate(current_weights())})
            return row

        optimizer = torch.optim.AdamW(student.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        result: FitResult = fit(
            student,
            optimizer,
            train_loader,
            self._loss_fn(loss, teacher, table),
            epochs=self.epochs,
            accelerator=accelerator,
            evaluate=evaluate,
            select=f"val_{self.select}",
            mode="max",
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            stateful=[loss] if isinstance(loss, GroupDistilLoss) else None,
            fingerprint=fingerprint,
            description=description or self.method,
        )
        self.model_ = accelerator.unwrap_model(student)
        self.loss_ = loss
        self.fit_result_ = result
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        recorded = [[row[f"group_weight:{g}"] for g in range(self.n_groups)] for row in result.history]
        self.group_weights_ = np.asarray([uniform, *recorded])
        return self

    def evaluate(self, model: nn.Module, loader, *, accelerator=None) -> dict[str, float]:
        """Accuracy overall, per group id and worst group on ``loader``."""
        out = self.predict(model, loader, accelerator=accelerator)
        return group_accuracy(out["pred"], out["label"], out["group"], self.n_groups)

    @staticmethod
    def predict(model: nn.Module, loader, *, accelerator=None) -> dict[str, np.ndarray]:
        """``pred``, ``prob`` (softmax, ``(n, classes)``), ``label``, ``group`` and ``index`` as arrays."""

        def forward(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            logits = m(batch["image"])
            if logits.ndim == 1:
                logits = torch.stack([torch.zeros_like(logits), logits], dim=-1)
            out = {"prob": logits.softmax(-1), "label": batch["label"].long(), "group": batch["group"].long()}
            if "index" in batch:
                out["index"] = batch["index"].long()
            return out

        was_training = model.training
        raw = predict(model, loader, forward, accelerator=accelerator)
        model.train(was_training)
        arrays = {k: v.numpy() for k, v in raw.items()}
        arrays["pred"] = arrays["prob"].argmax(axis=1)
        for key in ("label", "group", "index"):
            if key in arrays:
                arrays[key] = arrays[key].astype(np.int64)
        return arrays


def plot_group_weights(
    weights: np.ndarray, names: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Line plot of the group weights ``q`` over epochs (epoch 0 = before training) → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trustmed.report.figures import save_png

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    epochs = np.arange(len(weights))
    for g, name in enumerate(names):
        ax.plot(epochs, weights[:, g], marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("group weight q")
    ax.set_title(title or "group weights during training")
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path)
    return Path(path)


def make_group_loaders(
    manifest: pd.DataFrame,
    root: str | Path,
    *,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    group_column: str = "group",
    channels: int = 3,
    augment: bool = False,
    splits: Sequence[str] = ("train", "val", "test"),
) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """Loaders per split whose batches carry ``group`` ids, the group names and the training counts.

    The training loader shuffles (seeded); the others keep manifest order.
    """
    from torch.utils.data import DataLoader

    from trustmed.data.images import ImageDataset

    codes, names = encode_groups(manifest, group_column)
    loaders: dict[str, Any] = {}
    for split in splits:
        rows = np.flatnonzero((manifest["split"] == split).to_numpy())
        if len(rows) == 0:
            raise InputError(
                f"no rows in split {split!r}; splits present: {sorted(manifest['split'].unique())}"
            )
        part = manifest.iloc[rows].reset_index(drop=True)
        base = ImageDataset(
            part, root, image_size=image_size, channels=channels, augment=augment and split == "train"
        )
        loaders[split] = DataLoader(
            GroupDataset(base, codes[rows]),
            batch_size=batch_size,
            shuffle=split == "train",
            generator=torch.Generator().manual_seed(int(seed)),
        )
    train_codes = codes[(manifest["split"] == "train").to_numpy()]
    return loaders, names, np.bincount(train_codes, minlength=len(names))
