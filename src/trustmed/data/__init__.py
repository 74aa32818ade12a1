"""Datasets: every source becomes a manifest (see :mod:`trustmed.data.manifest`).

:func:`load_dataset` looks a dataset up by name in :data:`DATASETS`; adding a loader is one line
there (``"name": "module:function"``, imported only when used). ``synthskin`` is SynthSkin read by
the Fitzpatrick17k loader (it is written in that format). Each loader takes the dataset
root first and keyword options after it, and returns a validated manifest.

>>> {"manifest", "fitzpatrick17k", "chexpert"} <= set(DATASETS)
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from trustmed.errors import InputError

__all__ = ["DATASETS", "dataset_loader", "load_dataset"]

# name → "module:function"; the function is ``loader(root, **options) -> manifest``.
DATASETS: dict[str, str] = {
    "manifest": "trustmed.data.manifest:read_manifest",
    "fitzpatrick17k": "trustmed.data.fitzpatrick:load_fitzpatrick17k",
    "synthskin": "trustmed.data.fitzpatrick:load_fitzpatrick17k",
    "isic2019": "trustmed.data.isic:load_isic2019",
    "isic2020": "trustmed.data.isic:load_isic2020",
    "chexpert": "trustmed.data.chexpert:load_chexpert",
    "mimic_cxr": "trustmed.data.mimic:load_mimic_cxr",
    "nih": "trustmed.data.nih:load_nih",
    "waterbirds": "trustmed.data.waterbirds:load_waterbirds",
    "coloreddigits": "trustmed.data.waterbirds:load_waterbirds",
    "mnms": "trustmed.data.mnms:load_mnms",
}


def dataset_loader(name: str) -> Callable[..., pd.DataFrame]:
    """The loader function registered under ``name``."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    module, func = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), func)


def load_dataset(name: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """Load dataset ``name`` from ``root`` into a manifest; ``options`` go to its loader.

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
