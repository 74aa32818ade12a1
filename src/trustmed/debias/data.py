"""The external set of post-hoc debiasing: images, binary labels and one sensitive attribute.

Every post-hoc method (SWiFT, "Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025,
arXiv 2508.18826, and its baselines) starts from a trained model and a small labelled **external**
set that carries the sensitive attribute. :class:`GroupedSet` holds such a set (and the validation,
test and training splits the comparison evaluates on). This module also holds what is done to
such sets: reading them from a manifest (:func:`attribute_rows` is the one place where the
attribute column is checked; a missing value reads as ``"unknown"``), keeping the rows of known
attribute for fitting (:func:`known_only`: rows of unknown attribute are evaluated and reported, as
their own group left out of the gaps, but fitted on only with ``include_unknown``), balancing within each
label by group as SWiFT does before fine-tuning (:func:`balanced_indices`), stratified
sub-sampling (:func:`subsample`) and a model's scores on a set (:func:`predict_proba`).

>>> labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
>>> groups = np.array(["a", "a", "a", "b", "a", "b", "b", "b"])
>>> idx = balanced_indices(labels, groups, seed=0)
>>> sorted(zip(labels[idx].tolist(), groups[idx].tolist()))
[(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trustmed.errors import InputError
from trustmed.metrics.fairness import UNKNOWN
from trustmed.train import predict

__all__ = [
    "GroupedSet",
    "attribute_rows",
    "balanced_indices",
    "check_external_set",
    "known_attribute_rows",
    "known_only",
    "load_grouped_sets",
    "predict_proba",
    "subsample",
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


def attribute_rows(
    manifest: pd.DataFrame, attribute: str, *, keep_unknown: bool = False, what: str = "manifest"
) -> pd.DataFrame:
    """The rows of ``manifest`` with ``attribute`` as text, a missing value read as ``"unknown"``;
    without ``keep_unknown`` only the rows whose attribute is known.

    A missing column, or no row left, is an :class:`InputError` naming ``what``; dropped rows are
    logged as a warning.

    >>> rows = pd.DataFrame({"skin_tone": ["light", "unknown", None, "dark"]})
    >>> attribute_rows(rows, "skin_tone", keep_unknown=True)["skin_tone"].tolist()
    ['light', 'unknown', 'unknown', 'dark']
    """
    if attribute not in manifest.columns:
        raise InputError(
            f"{what}: attribute column {attribute!r} not found; "
            f"available: {', '.join(map(str, manifest.columns))}"
        )
    values = manifest[attribute]
    text = values.astype(object).where(values.notna(), UNKNOWN).astype(str)
    known = (text != UNKNOWN).to_numpy()
    if keep_unknown:
        rows = manifest.assign(**{attribute: text}).reset_index(drop=True)
    else:
        if not known.all():
            log.warning("%s: %d rows with unknown %s dropped", what, int((~known).sum()), attribute)
        rows = manifest.assign(**{attribute: text})[known].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"{what}: no rows with a known {attribute!r}")
    return rows


def known_attribute_rows(manifest: pd.DataFrame, attribute: str, *, what: str = "manifest") -> pd.DataFrame:
    """The rows of ``manifest`` whose ``attribute`` is known (not missing, not ``"unknown"``).

    A missing column, or no row left, is an :class:`InputError` naming ``what``; dropped rows are
    logged as a warning.

    >>> rows = pd.DataFrame({"skin_tone": ["light", "unknown", None, "dark"]})
    >>> known_attribute_rows(rows, "skin_tone")["skin_tone"].tolist()
    ['light', 'dark']
    >>> known_attribute_rows(rows, "sex")
    Traceback (most recent call last):
    ...
    trustmed.errors.InputError: manifest: attribute column 'sex' not found; available: skin_tone
    """
    return attribute_rows(manifest, attribute, keep_unknown=False, what=what)


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
    group_names : the groups, in a fixed order (default: sorted unique values of ``groups``); group
        indices in batches refer to this order.
    patient_ids : optional array ``(N,)`` of patient identifiers (bootstrap CIs resample patients).
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
        manifest: pd.DataFrame,
        root: str | Path | None,
        *,
        attribute: str,
        image_size: int,
        channels: int = 3,
        in_memory_bytes: int = 1 << 30,
        what: str = "manifest",
        keep_unknown: bool = False,
    ) -> GroupedSet:
        """Read a manifest's images (:class:`trustmed.data.images.ImageDataset`) with one attribute.

        Only rows with a known attribute are read, unless ``keep_unknown`` (their group is then
        ``"unknown"``, a missing value included; :func:`attribute_rows`). Images are stacked into
        one tensor when they fit in ``in_memory_bytes``, read lazily otherwise.
        """
        from trustmed.data.images import ImageDataset

        rows = attribute_rows(manifest, attribute, keep_unknown=keep_unknown, what=what)
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
            rows[attribute].to_numpy(),
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


def load_grouped_sets(
    manifest: pd.DataFrame,
    root: str | Path | None,
    *,
    attribute: str,
    image_size: int,
    splits: Sequence[str],
    channels: int = 3,
    required: Sequence[str] = (),
    what: str = "dataset",
    keep_unknown: bool = False,
) -> dict[str, GroupedSet]:
    """:class:`GroupedSet` per split of a manifest (``trustmed.data.load_dataset``).

    A split in ``required`` that the manifest lacks is an :class:`InputError`; other absent splits
    are skipped (with a log line). Rows of unknown attribute are dropped, or kept as the group
    ``"unknown"`` with ``keep_unknown`` (the evaluated splits; :func:`known_only` then gives the rows
    to fit on). Every set uses the same group order: the known groups of the attribute over the
    requested splits, sorted, then ``"unknown"`` in the sets that have it.
    """
    present = set(manifest["split"].astype(str))
    missing = [s for s in required if s not in present]
    if missing:
        raise InputError(f"{what}: split {missing[0]!r} not found; splits: {', '.join(sorted(present))}")
    sets = {}
    for split in dict.fromkeys(splits):
        if split not in present:
            log.info("%s: split %r not in the data; skipped", what, split)
            continue
        rows = manifest[manifest["split"].astype(str) == split]
        sets[split] = GroupedSet.from_manifest(
            rows,
            root,
            attribute=attribute,
            image_size=image_size,
            channels=channels,
            what=f"{what} {split}",
            keep_unknown=keep_unknown,
        )
    return _common_order(sets)


def _common_order(sets: dict[str, GroupedSet]) -> dict[str, GroupedSet]:
    known = tuple(sorted({g for s in sets.values() for g in s.group_names if g != UNKNOWN}))
    return {
        k: v.with_groups(v.groups, known + ((UNKNOWN,) if UNKNOWN in v.group_names else ()))
        for k, v in sets.items()
    }


def known_only(data: GroupedSet, what: str = "external set") -> GroupedSet:
    """The samples of ``data`` whose attribute is known (the group ``"unknown"`` left out, with a
    warning giving the count), in the same group order without ``"unknown"``: what a method fits on
    unless ``include_unknown``.

    >>> data = GroupedSet(torch.zeros(4, 1, 2, 2), [0, 1, 0, 1], ["a", "b", "unknown", "a"])
    >>> known_only(data).groups.tolist(), known_only(data).group_names
    (['a', 'b', 'a'], ('a', 'b'))
    """
    unknown = data.groups == UNKNOWN
    if not unknown.any():
        return data
    if unknown.all():
        raise InputError(f"{what}: no rows with a known {data.attribute!r}")
    log.warning(
        "%s: %d rows with unknown %s left out of fitting (include_unknown fits on them)",
        what,
        int(unknown.sum()),
        data.attribute,
    )
    kept = data.subset(np.flatnonzero(~unknown))
    return kept.with_groups(kept.groups, tuple(g for g in data.group_names if g != UNKNOWN))


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


def subsample(data: GroupedSet, n: int, *, seed: int = 0) -> GroupedSet:
    """``n`` samples of ``data`` stratified by group × label (proportional, at least one per cell)."""
    if n >= len(data):
        return data
    if n < 1:
        raise InputError(f"external set size must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(data.groups.tolist(), data.labels.tolist(), strict=True)):
        cells.setdefault(key, []).append(i)
    keys = sorted(cells)
    sizes = np.array([len(cells[k]) for k in keys], dtype=float)
    exact = n * sizes / sizes.sum()
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: n - take.sum()]:
        take[i] += 1
    take = np.minimum(np.maximum(take, 1), sizes.astype(int))
    chosen = [
        rng.choice(np.asarray(cells[k]), size=t, replace=False) for k, t in zip(keys, take, strict=True)
    ]
    return data.subset(np.sort(np.concatenate(chosen)))


def predict_proba(model: nn.Module, data: GroupedSet, batch_size: int = 256) -> np.ndarray:
    """Sigmoid scores of ``model`` on every sample of ``data``, in order.

    A score that is not a number (a model whose output is NaN) is an :class:`InputError`.
    """
    out = predict(model, data.loader(batch_size), lambda m, b: {"score": torch.sigmoid(m(b[0].float()))})
    scores = out["score"].numpy()
    bad = np.isnan(scores)
    if bad.any():
        first = int(bad.argmax())
        name = data.sample_ids[first] if data.sample_ids is not None else f"row {first}"
        raise InputError(
            f"the model's output is not a number for {int(bad.sum())} of {len(scores)} samples "
            f"(first: {name})"
        )
    return scores
