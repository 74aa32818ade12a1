"""The manifest: the one table every dataset becomes, one row per image.

Every loader (real datasets and synthetic benchmarks) returns a pandas DataFrame with these
columns, in this order, followed by any dataset-specific extras:

============== ======================================================================
``sample_id``  str, unique
``path``       str, image path relative to the dataset root (or absolute)
``label``      int 0/1 for binary tasks
``split``      ``train`` / ``val`` / ``external`` / ``test`` / ``ood`` (or a dataset's own)
``patient_id`` str; equal to ``sample_id`` when the dataset does not know patients
attributes     sensitive attributes, e.g. ``skin_tone`` (light / dark / unknown), ``fitzpatrick``
               (1–6, −1 unknown), ``sex``, ``age``, ``age_bin``
============== ======================================================================

The layout mirrors the per-image metadata tables of fairness benchmarks such as MEDFAIR (Zong et
al., "MEDFAIR: Benchmarking Fairness for Medical Imaging", ICLR 2023, arXiv 2210.01725). Age is
binned into four fixed bins, ``<40``, ``40-59``, ``60-74``, ``75+`` (a missing age is ``unknown``),
so that every dataset's ``age_bin`` means the same thing.

Users with their own data write a plain manifest CSV (the columns above) and load it with
:func:`read_manifest` or ``load_dataset("manifest", path)``.

>>> import pandas as pd
>>> df = pd.DataFrame({"sample_id": ["a", "b"], "path": ["a.png", "b.png"], "label": [0, 1],
...                    "split": ["train", "test"], "patient_id": ["p1", "p2"], "age": [35, 80]})
>>> df["age_bin"] = age_bins(df["age"])
>>> validate_manifest(df, attributes=["age_bin"])["age_bin"].tolist()
['<40', '75+']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = [
    "AGE_BINS",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "age_bins",
    "check_images",
    "read_manifest",
    "skin_tone_from_fitzpatrick",
    "stratified_split",
    "validate_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("sample_id", "path", "label", "split", "patient_id")
SPLITS: tuple[str, ...] = ("train", "val", "external", "test", "ood")
AGE_BINS: tuple[str, ...] = ("<40", "40-59", "60-74", "75+")
_AGE_EDGES = (-np.inf, 40, 60, 75, np.inf)


def age_bins(age: Iterable[float]) -> pd.Series:
    """Map ages (years) to the four :data:`AGE_BINS`; a missing age becomes ``"unknown"``.

    >>> age_bins([12, 40, 59.9, 60, 74, 75, None]).tolist()
    ['<40', '40-59', '40-59', '60-74', '60-74', '75+', 'unknown']
    """
    values = pd.to_numeric(pd.Series(list(age), dtype="object"), errors="coerce").astype(float)
    binned = pd.cut(values, bins=list(_AGE_EDGES), labels=list(AGE_BINS), right=False)
    return binned.astype(object).where(values.notna(), "unknown").astype(str)


def skin_tone_from_fitzpatrick(fitzpatrick: Iterable[int], *, dark_threshold: int = 4) -> pd.Series:
    """Fitzpatrick type (1–6; −1 or missing = unknown) → ``light`` / ``dark`` / ``unknown``.

    Types ``>= dark_threshold`` are dark (default: light = 1–3, dark = 4–6).

    >>> skin_tone_from_fitzpatrick([1, 3, 4, 6, -1]).tolist()
    ['light', 'light', 'dark', 'dark', 'unknown']
    """
    if not 2 <= dark_threshold <= 6:
        raise InputError(f"dark_threshold must be between 2 and 6 (Fitzpatrick types), got {dark_threshold}")
    types = pd.to_numeric(pd.Series(list(fitzpatrick), dtype="object"), errors="coerce")
    known = types.between(1, 6)
    tone = np.where(types >= dark_threshold, "dark", "light")
    return pd.Series(np.where(known, tone, "unknown"), index=types.index, dtype=object)


def validate_manifest(
    df: pd.DataFrame, *, attributes: Sequence[str] = (), where: str = "manifest"
) -> pd.DataFrame:
    """Check a manifest and return it with normalised dtypes (columns in the standard order first).

    Raises :class:`~trustmed.errors.InputError` naming missing columns, empty tables, missing or
    non-integer labels, duplicate sample ids, missing paths or splits.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{where}: expected a table, got {type(df).__name__}")
    if df.empty:
        raise InputError(f"{where}: no rows")
    df = df.copy()
    if "patient_id" not in df.columns and "sample_id" in df.columns:
        df["patient_id"] = df["sample_id"]
    required = [*MANIFEST_COLUMNS, *[a for a in attributes if a not in MANIFEST_COLUMNS]]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"{where}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"available: {', '.join(map(str, df.columns))}"
        )
    for col in ("sample_id", "path", "split"):
        bad = df[col].isna()
        if bad.any():
            raise InputError(
                f"{where}: {int(bad.sum())} row(s) with an empty {col!r} (first at row {_first(bad)})"
            )
    labels = pd.to_numeric(df["label"], errors="coerce")
    if labels.isna().any():
        raise InputError(
            f"{where}: {int(labels.isna().sum())} row(s) with a missing or non-numeric 'label' "
            f"(first at row {_first(labels.isna())}: {df['label'].iloc[_first(labels.isna())]!r})"
        )
    if (labels != labels.round()).any():
        raise InputError(
            f"{where}: 'label' must be integer class codes, "
            f"got e.g. {labels[labels != labels.round()].iloc[0]}"
        )
    df["label"] = labels.astype(np.int64)
    for col in ("sample_id", "path", "split", "patient_id"):
        df[col] = df[col].astype(str)
    df["patient_id"] = df["patient_id"].where(df["patient_id"].str.len() > 0, df["sample_id"])
    dup = df["sample_id"].duplicated()
    if dup.any():
        raise InputError(f"{where}: duplicate sample_id {df['sample_id'][dup].iloc[0]!r}")
    for attr in attributes:
        if df[attr].isna().all():
            raise InputError(f"{where}: attribute column {attr!r} is empty")
    ordered = [*MANIFEST_COLUMNS, *[c for c in df.columns if c not in MANIFEST_COLUMNS]]
    return df[ordered].reset_index(drop=True)


def _first(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def read_manifest(csv_path: str | Path, *, attributes: Sequence[str] = ()) -> pd.DataFrame:
    """Read a plain manifest CSV (the format for users' own data) and validate it.

    ``csv_path`` may also be a folder that contains ``manifest.csv``. Relative image paths are
    relative to the folder holding the CSV.
    """
    path = Path(csv_path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    df = read_csv(
        path,
        what="manifest",
        dtype={"sample_id": str, "patient_id": str, "path": str, "split": str},
        allow_empty=True,
    )
    df = validate_manifest(df, attributes=attributes, where=str(path))
    if "age" in df.columns and "age_bin" not in df.columns:
        df["age_bin"] = age_bins(df["age"])
    return df


def check_images(df: pd.DataFrame, root: str | Path | None) -> None:
    """Raise :class:`InputError` naming the first image of ``df`` that does not exist under ``root``."""
    base = Path(root) if root is not None else Path(".")
    if base.is_file():
        base = base.parent
    for rel in df["path"]:
        p = Path(rel)
        full = p if p.is_absolute() else base / p
        if not full.is_file():
            raise InputError(
                f"image not found: {full} (and possibly others; {len(df)} images expected under {base})"
            )


def stratified_split(
    df: pd.DataFrame,
    fractions: Mapping[str, float],
    *,
    seed: int = 0,
    stratify: Sequence[str] = ("label",),
    group: str = "patient_id",
) -> pd.Series:
    """A seeded split that keeps strata proportions and never puts one patient in two splits.

    Patients are assigned whole: each patient is put in a stratum by its first row's
    ``stratify`` values, patients of each stratum are shuffled with ``seed`` and cut by
    ``fractions`` (largest-remainder rounding, so counts add up exactly).

    >>> df = pd.DataFrame({"label": [0, 1] * 10, "patient_id": [str(i // 2) for i in range(20)]})
    >>> split = stratified_split(df, {"train": 0.6, "test": 0.4}, seed=0)
    >>> int(split.groupby(df["patient_id"]).nunique().max())
    1
    """
    total = sum(fractions.values())
    if not fractions or total <= 0 or any(v < 0 for v in fractions.values()):
        raise InputError(f"split fractions must be non-negative and sum to > 0, got {dict(fractions)}")
    names = list(fractions)
    probs = np.array([fractions[n] / total for n in names])
    rng = np.random.default_rng(seed)
    patients = df.groupby(group, sort=True).head(1)
    keys = patients[list(stratify)].astype(str).agg("|".join, axis=1)
    assignment: dict[str, str] = {}
    for key in sorted(keys.unique()):
        members = patients.loc[keys == key, group].to_numpy()
        members = members[rng.permutation(len(members))]
        raw = probs * len(members)
        counts = np.floor(raw).astype(int)
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[: len(members) - counts.sum()]] += 1
        start = 0
        for name, count in zip(names, counts, strict=True):
            for pid in members[start : start + count]:
                assignment[pid] = name
            start += count
    return df[group].map(assignment).rename("split")
