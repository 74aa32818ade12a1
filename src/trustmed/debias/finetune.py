"""The external set, its balancing, and the fine-tuning baselines of post-hoc debiasing.

Every post-hoc method (SWiFT, BMFT, FairPrune, fine-tuning) starts from a trained model and a small
labelled **external** set that carries the sensitive attribute. :class:`GroupedSet` holds such a set
(images, binary labels, group of each sample); :func:`balanced_indices` balances it within each
label by group, as SWiFT ("Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025,
arXiv 2508.18826) does before fine-tuning: the majority groups are down-sampled to the minority
group's count.

:class:`FineTune` is the simplest baseline on that set: full fine-tuning on the balanced external
set with the weighted BCE (``finetune``), or with ``WBCE + λ·B`` where ``B`` is the bias loss
(``finetune_fair``).

>>> import numpy as np
>>> labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
>>> groups = np.array(["a", "a", "a", "b", "a", "b", "b", "b"])
>>> idx = balanced_indices(labels, groups, seed=0)
>>> sorted(zip(labels[idx].tolist(), groups[idx].tolist()))
[(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trustmed.debias.losses import BIAS_LOSSES, bias_loss, wbce
from trustmed.errors import InputError
from trustmed.train import FitResult, fit, predict
from trustmed.utils import seed_everything

__all__ = [
    "GroupedSet",
    "balanced_indices",
    "check_external_set",
    "make_optimizer",
    "combined_loss",
    "predict_proba",
    "Cost",
    "FineTune",
]

log = logging.getLogger(__name__)


def _image_of(item: Any) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, dict):
        return item["image"]
    if isinstance(item, list | tuple):
        return item[0]
    raise TypeError(f"cannot find the image in a dataset item of type {type(item).__name__}")


class _Items(Dataset):
    """``(image, label, group index)`` triples over an image source and two aligned arrays."""

    def __init__(self, images, labels: np.ndarray, group_index: np.ndarray, indices: np.ndarray):
        self.images, self.labels, self.group_index, self.indices = images, labels, group_index, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        image = _image_of(self.images[j]).float()
        return image, torch.tensor(float(self.labels[j])), torch.tensor(int(self.group_index[j]))


@dataclass
class GroupedSet:
    """Images with binary labels and the value of a sensitive attribute for each sample.

    Parameters
    ----------
    images : a tensor ``(N, C, H, W)`` or any dataset whose item ``i`` is an image tensor (or a
        tuple / dict whose first element / ``"image"`` entry is one).
    labels : array ``(N,)`` of 0/1.
    groups : array ``(N,)`` of attribute values (converted to strings).
    attribute : name of the sensitive attribute (for messages and reports).
    sample_ids : optional array ``(N,)`` of identifiers, carried into prediction tables.
    patient_ids : optional array ``(N,)`` of patient identifiers (bootstrap CIs resample patients).
    group_names : the groups, in a fixed order (default: sorted unique values of ``groups``); group
        indices in batches refer to this order.
    """

    images: Any
    labels: np.ndarray
    groups: np.ndarray
    attribute: str = "group"
    sample_ids: np.ndarray | None = None
    group_names: tuple[str, ...] = field(default=())
    patient_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(int)
        self.groups = np.asarray(self.groups).astype(str)
        if len(self.labels) != len(self.groups) or len(self.labels) != len(self.images):
            raise InputError(
                f"grouped set: {len(self.images)} images, {len(self.labels)} labels and {len(self.groups)} "
                "group values; expected the same number"
            )
        if not np.isin(self.labels, (0, 1)).all():
            raise InputError(
                f"grouped set: labels must be 0/1, got values {sorted(set(self.labels.tolist()))}"
            )
        if not self.group_names:
            self.group_names = tuple(sorted(set(self.groups.tolist())))
        unknown = set(self.groups.tolist()) - set(self.group_names)
        if unknown:
            raise InputError(
                f"grouped set: groups {sorted(unknown)} are not in group_names {self.group_names}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_manifest(
        cls,
        manifest,
        root,
        *,
        attribute: str,
        image_size: int,
        channels: int = 3,
        in_memory_bytes: int = 1 << 30,
        what: str = "manifest",
    ) -> GroupedSet:
        """Read a manifest's images (:class:`trustmed.data.images.ImageDataset`) with one attribute.

        Rows whose attribute is missing or ``"unknown"`` are dropped (with a warning). Images are
        stacked into one tensor when they fit in ``in_memory_bytes``, read lazily otherwise.
        """
        from trustmed.data.images import ImageDataset

        if attribute not in manifest.columns:
            raise InputError(
                f"{what}: attribute column {attribute!r} not found; "
                f"available: {', '.join(map(str, manifest.columns))}"
            )
        known = manifest[attribute].notna() & (manifest[attribute].astype(str) != "unknown")
        if not known.all():
            log.warning("%s: %d rows with unknown %s dropped", what, int((~known).sum()), attribute)
        rows = manifest[known].reset_index(drop=True)
        if rows.empty:
            raise InputError(f"{what}: no rows with a known {attribute!r}")
        dataset = ImageDataset(rows, root, image_size=image_size, channels=channels, cache=False)
        if len(rows) * channels * image_size**2 * 4 <= in_memory_bytes:
            images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        else:
            images = dataset
        ids = rows["sample_id"].astype(str).to_numpy() if "sample_id" in rows else None
        patients = rows["patient_id"].astype(str).to_numpy() if "patient_id" in rows else None
        return cls(
            images,
            rows["label"].to_numpy(),
            rows[attribute].astype(str).to_numpy(),
            attribute,
            ids,
            patient_ids=patients,
        )

    @property
    def group_index(self) -> np.ndarray:
        lookup = {g: i for i, g in enumerate(self.group_names)}
        return np.array([lookup[g] for g in self.groups], dtype=int)

    def subset(self, indices: Sequence[int] | np.ndarray) -> GroupedSet:
        """The samples at ``indices`` (the group order is kept)."""
        indices = np.asarray(indices, dtype=int)
        images = (
            self.images[torch.as_tensor(indices)]
            if isinstance(self.images, torch.Tensor)
            else (torch.utils.data.Subset(self.images, indices.tolist()))
        )
        return GroupedSet(
            images=images,
            labels=self.labels[indices],
            groups=self.groups[indices],
            attribute=self.attribute,
            sample_ids=None if self.sample_ids is None else np.asarray(self.sample_ids)[indices],
            group_names=self.group_names,
            patient_ids=None if self.patient_ids is None else np.asarray(self.patient_ids)[indices],
        )

    def with_groups(self, groups: np.ndarray, group_names: tuple[str, ...]) -> GroupedSet:
        """The same samples with other group values (e.g. after merging groups)."""
        return GroupedSet(
            self.images, self.labels, groups, self.attribute, self.sample_ids, group_names, self.patient_ids
        )

    def loader(
        self, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0, indices: np.ndarray | None = None
    ) -> DataLoader:
        """A loader of ``(image, label, group index)`` batches (seeded when shuffled)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=int)
        items = _Items(self.images, self.labels, self.group_index, idx)
        generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return DataLoader(items, batch_size=batch_size, shuffle=shuffle, generator=generator)


def check_external_set(external_set: GroupedSet, what: str = "external set") -> None:
    """Raise :class:`InputError` unless the set has at least two groups and both classes."""
    if len(external_set) == 0:
        raise InputError(f"{what}: no samples")
    groups = sorted(set(external_set.groups.tolist()))
    if len(groups) < 2:
        raise InputError(
            f"{what}: attribute '{external_set.attribute}' has a single group ({groups[0]!r}); "
            "debiasing needs at least two groups"
        )
    classes = sorted(set(external_set.labels.tolist()))
    if len(classes) < 2:
        raise InputError(f"{what}: all labels are {classes[0]}; debiasing needs both classes (0 and 1)")


def balanced_indices(labels: np.ndarray, groups: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Indices of a subset balanced by group within each label.

    For each label, every group present with that label is down-sampled (without replacement,
    seeded) to the count of the smallest such group. A group absent from a label is left out of
    that label's balancing (a warning is logged).
    """
    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    all_groups = sorted(set(groups.tolist()))
    keep: list[np.ndarray] = []
    for label in sorted(set(labels.tolist())):
        members = {g: np.flatnonzero((labels == label) & (groups == g)) for g in all_groups}
        present = {g: m for g, m in members.items() if len(m)}
        missing = sorted(set(all_groups) - set(present))
        if missing:
            log.warning("label %s: no samples of groups %s; balancing the other groups only", label, missing)
        count = min(len(m) for m in present.values())
        keep += [np.sort(rng.choice(m, size=count, replace=False)) for m in present.values()]
    return np.sort(np.concatenate(keep))


def make_optimizer(
    params, name: str = "sgd", lr: float = 1e-4, *, weight_decay: float = 5e-4, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """SGD with momentum (SWiFT's choice for skin images) or Adam (its choice for chest X-rays)."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise InputError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def combined_loss(
    pred_weight: float, bias_weight: float, *, kind: str = "eodds", n_groups: int | None = None
) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn(model, (x, y, g)) = pred_weight · WBCE + bias_weight · B``."""
    if kind not in BIAS_LOSSES:
        raise InputError(f"bias_loss must be one of {BIAS_LOSSES}, got {kind!r}")

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        x, y, g = (t.to(_device_of(model)) for t in batch)
        logits = model(x)
        loss = logits.new_zeros(())
        if pred_weight:
            loss = loss + pred_weight * wbce(logits, y)
        if bias_weight:
            loss = loss + bias_weight * bias_loss(logits, y, g, kind=kind, n_groups=n_groups)
        return loss

    return loss_fn


def predict_proba(model: nn.Module, data: GroupedSet, batch_size: int = 256) -> np.ndarray:
    """Sigmoid scores of ``model`` on every sample of ``data``, in order."""
    out = predict(model, data.loader(batch_size), lambda m, b: {"score": torch.sigmoid(m(b[0].float()))})
    return out["score"].numpy()


@dataclass
class Cost:
    """What a method spent: wall time, epochs, samples seen, trainable-parameter updates."""

    wall_time_s: float = 0.0
    epochs: int = 0
    samples_seen: int = 0
    parameter_updates: int = 0

    def add(self, result: FitResult) -> None:
        self.epochs += result.epochs
        self.samples_seen += result.samples_seen
        self.parameter_updates += result.parameter_updates

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_time_s": self.wall_time_s,
            "epochs": self.epochs,
            "samples_seen": self.samples_seen,
            "parameter_updates": self.parameter_updates,
        }


class FineTune:
    """Full fine-tuning on the balanced external set: ``finetune`` (WBCE) or ``finetune_fair`` (WBCE + λ·B).

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational; groups come with the set).
    fair : add the bias loss ``λ·B`` to the weighted BCE.
    bias_loss : ``"eodds"``, ``"eopp"`` or ``"dp"``.
    lam : weight λ of the bias loss when ``fair``.
    lr, epochs, batch_size, optimizer, weight_decay : the fine-tuning schedule.
    seed : seeds balancing, shuffling and initialisation.

    Attributes
    ----------
    model_ : the fine-tuned copy of the model.
    history_ : per-epoch training losses.
    cost_ : :class:`Cost` as a dict.

    Examples
    --------
    >>> import torch
    >>> from trustmed.models import ModelSpec, build_model
    >>> _ = torch.manual_seed(0)
    >>> model = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=2))
    >>> data = GroupedSet(torch.randn(16, 3, 8, 8), [0, 1] * 8, ["a"] * 8 + ["b"] * 8)
    >>> tuned = FineTune(epochs=1).fit(model, data)
    >>> tuned.cost_["epochs"]
    1
    """

    def __init__(
        self,
        attribute: str | None = None,
        *,
        fair: bool = False,
        bias_loss: str = "eodds",
        lam: float = 1.0,
        lr: float = 1e-4,
        epochs: int = 10,
        batch_size: int = 64,
        optimizer: str = "sgd",
        weight_decay: float = 5e-4,
        seed: int = 0,
    ):
        self.attribute = attribute
        self.fair = fair
        self.bias_loss = bias_loss
        self.lam = lam
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.seed = seed

    def fit(self, model: nn.Module, external_set: GroupedSet, val_set: GroupedSet | None = None) -> FineTune:
        """Fine-tune a copy of ``model`` on the balanced ``external_set``."""
        check_external_set(external_set)
        start = time.perf_counter()
        seed_everything(self.seed)
        model = copy.deepcopy(model)
        for p in model.parameters():
            p.requires_grad_(True)
        balanced = balanced_indices(external_set.labels, external_set.groups, seed=self.seed)
        loader = external_set.loader(self.batch_size, shuffle=True, seed=self.seed, indices=balanced)
        loss_fn = combined_loss(
            1.0, self.lam if self.fair else 0.0, kind=self.bias_loss, n_groups=len(external_set.group_names)
        )
        optimizer = make_optimizer(
            model.parameters(), self.optimizer, self.lr, weight_decay=self.weight_decay
        )
        result = fit(model, optimizer, loader, loss_fn, epochs=self.epochs, description="fine-tune")
        cost = Cost()
        cost.add(result)
        cost.wall_time_s = time.perf_counter() - start
        self.model_ = model
        self.history_ = result.history
        self.n_balanced_ = len(balanced)
        self.cost_ = cost.as_dict()
        return self
