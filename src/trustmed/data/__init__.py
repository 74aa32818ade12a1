"""Datasets, looked up by name: every loader returns the table its kind describes.

:func:`load_dataset` looks a dataset up in :data:`DATASETS`; adding one is one line there
(``"name": Dataset(kind, "module:function")``, imported only when used). Each loader takes the
dataset root first and keyword options after it. The kind says what it returns:

- ``classification``: a validated manifest (:mod:`trustmed.data.manifest`);
- ``group``: a manifest with a ``group`` column, for group-robust distillation;
- ``grounding``: a grounding table, one row per (image, phrase) pair (:mod:`trustmed.data.mscxr`).

Each classification entry also carries what fits its data (:func:`dataset_defaults`): the
sensitive ``attributes`` its loader always produces, the ``image_size``, image ``channels`` and
model ``arch`` to train on it. Chest X-rays (``chexpert``, ``mimic_cxr``, ``nih``) are read as
one-channel images for a DenseNet-121, the backbone of CheXNet (Rajpurkar et al., arXiv 1711.05225)
and of the CheXpert baselines (Irvin et al., AAAI 2019); real skin photographs (``fitzpatrick17k``,
``isic2019``, ``isic2020``) as three-channel images for a ResNet-18, the default backbone of the
MEDFAIR benchmark (Zong et al., ICLR 2023); both at 224 × 224, the input size of those ImageNet
backbones. SynthSkin is drawn at 32 × 32 for a small CNN. ``manifest`` (users' own data) names no
attributes: they are the manifest's own attribute columns
(:func:`trustmed.data.manifest.attribute_columns`).

Synthetic benchmarks are registered under the name of the format they are written in:
``synthskin`` is read by the Fitzpatrick17k loader, ``coloreddigits`` by the Waterbirds loader,
``synthcxr`` by the MS-CXR loader and ``synthcxr_vindr`` by the VinDr-CXR loader.

>>> {"manifest", "fitzpatrick17k", "chexpert"} <= set(DATASETS)
True
>>> dataset_kind("mscxr"), dataset_names("group")
('grounding', ['coloreddigits', 'mnms', 'waterbirds'])
>>> dataset_defaults("isic2020")["attributes"]
['sex', 'age_bin']
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, get_args

import pandas as pd

from trustmed.errors import InputError

__all__ = [
    "DATASETS",
    "KINDS",
    "Dataset",
    "dataset_defaults",
    "dataset_kind",
    "dataset_loader",
    "dataset_names",
    "load_dataset",
]

Kind = Literal["classification", "group", "grounding"]
KINDS: tuple[str, ...] = get_args(Kind)


_NO_DEFAULTS: Mapping[str, Any] = MappingProxyType({})


class Dataset(NamedTuple):
    """A registered dataset: what its loader returns, where the loader is, and what fits its data.

    ``defaults`` (read with :func:`dataset_defaults`) may hold ``attributes`` (sensitive-attribute
    columns the loader always returns), ``image_size``, ``channels`` and ``arch``.
    """

    kind: Kind
    loader: str  # "module:function"; ``loader(root, **options) -> table``
    defaults: Mapping[str, Any] = _NO_DEFAULTS


def _defaults(
    attributes: tuple[str, ...] | None, image_size: int, channels: int, arch: str
) -> Mapping[str, Any]:
    values: dict[str, Any] = {} if attributes is None else {"attributes": tuple(attributes)}
    values.update(image_size=image_size, channels=channels, arch=arch)
    return MappingProxyType(values)


_CXR = _defaults(("sex", "age_bin"), 224, 1, "densenet121")
_SKIN_TYPE = ("skin_tone", "fitzpatrick")

DATASETS: dict[str, Dataset] = {
    "manifest": Dataset(
        "classification", "trustmed.data.manifest:read_manifest", _defaults(None, 224, 3, "resnet18")
    ),
    "fitzpatrick17k": Dataset(
        "classification",
        "trustmed.data.fitzpatrick:load_fitzpatrick17k",
        _defaults(_SKIN_TYPE, 224, 3, "resnet18"),
    ),
    # SynthSkin's side file gives every image a sex and an age as well.
    "synthskin": Dataset(
        "classification",
        "trustmed.data.fitzpatrick:load_fitzpatrick17k",
        _defaults((*_SKIN_TYPE, "sex", "age_bin"), 32, 3, "tiny_cnn"),
    ),
    # ISIC publishes sex and age, but no skin type.
    "isic2019": Dataset(
        "classification",
        "trustmed.data.isic:load_isic2019",
        _defaults(("sex", "age_bin"), 224, 3, "resnet18"),
    ),
    "isic2020": Dataset(
        "classification",
        "trustmed.data.isic:load_isic2020",
        _defaults(("sex", "age_bin"), 224, 3, "resnet18"),
    ),
    # race only with the separately released demographics table: not a default
    "chexpert": Dataset("classification", "trustmed.data.chexpert:load_chexpert", _CXR),
    # MIMIC-CXR always has a race column (unknown without the MIMIC-IV tables)
    "mimic_cxr": Dataset(
        "classification",
        "trustmed.data.mimic:load_mimic_cxr",
        _defaults(("sex", "age_bin", "race"), 224, 1, "densenet121"),
    ),
    "nih": Dataset("classification", "trustmed.data.nih:load_nih", _CXR),
    "waterbirds": Dataset("group", "trustmed.data.waterbirds:load_waterbirds"),
    "coloreddigits": Dataset("group", "trustmed.data.waterbirds:load_waterbirds"),
    "mnms": Dataset("group", "trustmed.data.mnms:load_mnms"),
    "mscxr": Dataset("grounding", "trustmed.data.mscxr:load_mscxr"),
    "vindr": Dataset("grounding", "trustmed.data.vindr:load_vindr"),
    "nih_bbox": Dataset("grounding", "trustmed.data.nih:load_nih_bbox"),
    "synthcxr": Dataset("grounding", "trustmed.data.mscxr:load_mscxr"),
    "synthcxr_vindr": Dataset("grounding", "trustmed.data.vindr:load_vindr"),
}


def _entry(name: str) -> Dataset:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def dataset_kind(name: str) -> str:
    """The kind of dataset ``name``: ``classification``, ``group`` or ``grounding``."""
    return _entry(name).kind


def dataset_defaults(name: str) -> dict[str, Any]:
    """A copy of what fits dataset ``name``: ``attributes``, ``image_size``, ``channels``, ``arch``.

    Keys a dataset does not fix are absent (``manifest`` has no ``attributes``: use
    :func:`trustmed.data.manifest.attribute_columns` on the loaded table; datasets of other kinds
    than ``classification`` have no defaults). Changing the copy leaves the registry as it is.

    >>> dataset_defaults("chexpert")
    {'attributes': ['sex', 'age_bin'], 'image_size': 224, 'channels': 1, 'arch': 'densenet121'}
    >>> dataset_defaults("manifest")
    {'image_size': 224, 'channels': 3, 'arch': 'resnet18'}
    >>> dataset_defaults("synthskin")["arch"], dataset_defaults("mscxr")
    ('tiny_cnn', {})
    """
    return {
        key: list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        for key, value in _entry(name).defaults.items()
    }


def dataset_names(kind: str | None = None) -> list[str]:
    """Registered dataset names (of one kind), sorted."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    return sorted(name for name, entry in DATASETS.items() if kind is None or entry.kind == kind)


def dataset_loader(name: str) -> Callable[..., pd.DataFrame]:
    """The loader function registered under ``name``."""
    from trustmed.utils import import_object

    return import_object(_entry(name).loader)


def load_dataset(name: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """Load dataset ``name`` from ``root`` into the table of its kind; ``options`` go to its loader.

    An option the loader does not take is an :class:`~trustmed.errors.InputError` listing the valid ones.
    """
    loader = dataset_loader(name)
    params = inspect.signature(loader).parameters
    accepted = [p for p, spec in list(params.items())[1:] if spec.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise InputError(
            f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(accepted) or 'none'}"
        )
    return loader(Path(root), **options)
