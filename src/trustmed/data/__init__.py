"""Datasets, looked up by name: every loader returns the table its kind describes.

:func:`load_dataset` looks a dataset up in :data:`DATASETS`; adding one is one line there
(``"name": Dataset(kind, "module:function")``, imported only when used). Each loader takes the
dataset root first and keyword options after it. The kind says what it returns:

- ``classification``: a validated manifest (:mod:`trustmed.data.manifest`);
- ``group``: a manifest with a ``group`` column, for group-robust distillation;
- ``grounding``: a grounding table, one row per (image, phrase) pair (:mod:`trustmed.data.mscxr`).

Synthetic benchmarks are registered under the name of the format they are written in:
``synthskin`` is read by the Fitzpatrick17k loader, ``coloreddigits`` by the Waterbirds loader,
``synthcxr`` by the MS-CXR loader and ``synthcxr_vindr`` by the VinDr-CXR loader.

>>> {"manifest", "fitzpatrick17k", "chexpert"} <= set(DATASETS)
True
>>> dataset_kind("mscxr"), dataset_names("group")
('grounding', ['coloreddigits', 'mnms', 'waterbirds'])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import pandas as pd

from trustmed.errors import InputError

__all__ = [
    "DATASETS",
    "KINDS",
    "Dataset",
    "dataset_kind",
    "dataset_loader",
    "dataset_names",
    "load_dataset",
]

Kind = Literal["classification", "group", "grounding"]
KINDS: tuple[str, ...] = get_args(Kind)


class Dataset(NamedTuple):
    """A registered dataset: what its loader returns and where the loader is."""

    kind: Kind
    loader: str  # "module:function"; ``loader(root, **options) -> table``


DATASETS: dict[str, Dataset] = {
    "manifest": Dataset("classification", "trustmed.data.manifest:read_manifest"),
    "fitzpatrick17k": Dataset("classification", "trustmed.data.fitzpatrick:load_fitzpatrick17k"),
    "synthskin": Dataset("classification", "trustmed.data.fitzpatrick:load_fitzpatrick17k"),
    "isic2019": Dataset("classification", "trustmed.data.isic:load_isic2019"),
    "isic2020": Dataset("classification", "trustmed.data.isic:load_isic2020"),
    "chexpert": Dataset("classification", "trustmed.data.chexpert:load_chexpert"),
    "mimic_cxr": Dataset("classification", "trustmed.data.mimic:load_mimic_cxr"),
    "nih": Dataset("classification", "trustmed.data.nih:load_nih"),
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
