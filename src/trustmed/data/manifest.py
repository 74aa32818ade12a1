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

:data:`ATTRIBUTE_COLUMNS` lists the sensitive attributes the manifest knows by name;
:func:`attribute_columns` picks those a table has (the attributes of a user's own manifest).

Datasets without an external split get one carved from ``train`` by :func:`ensure_external`;
:func:`split_table` and :func:`apply_split_table` save and re-apply the split a run used.

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
    "ATTRIBUTE_COLUMNS",
    "MANIFEST_COLUMNS",
    "SPLITS",
    "age_bins",
    "apply_split_table",
    "attribute_columns",
    "check_images",
    "ensure_external",
    "read_manifest",
    "skin_tone_from_fitzpatrick",
    "split_table",
    "stratified_split",
    "validate_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = ("sample_id", "path", "label", "split", "patient_id")
SPLITS: tuple[str, ...] = ("train", "val", "external", "test", "ood")
AGE_BINS: tuple[str, ...] = ("<40", "40-59", "60-74", "75+")
ATTRIBUTE_COLUMNS: tuple[str, ...] = ("skin_tone", "fitzpatrick", "sex", "age_bin", "race", "ethnicity")
"""Sensitive-attribute columns known by name, in the order :func:`attribute_columns` returns them."""
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


def attribute_columns(manifest: pd.DataFrame) -> list[str]:
    """The :data:`ATTRIBUTE_COLUMNS` that ``manifest`` has (and that are not entirely blank), in
    that order: the attributes to audit when a dataset names none (a user's own manifest).

    >>> df = pd.DataFrame({"sample_id": ["a"], "race": ["white"], "sex": ["female"], "site": ["torso"]})
    >>> attribute_columns(df)
    ['sex', 'race']
    """
    return [c for c in ATTRIBUTE_COLUMNS if c in manifest.columns and manifest[c].notna().any()]


def _patient_strata(rows: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    # One value per patient: the label is the patient's highest label (a patient with any positive
    # image is a positive patient); other columns take the patient's first row.
    grouped = rows.groupby("patient_id", sort=True)
    parts = [
        grouped["label"].max().astype(str) if c == "label" else grouped[c].first().astype(str)
        for c in columns
    ]
    key = parts[0]
    for part in parts[1:]:
        key = key + "|" + part
    return key


def _merge_rare(strata: pd.Series, labels: pd.Series) -> pd.Series:
    # A stratum of one patient cannot be split: it joins its label's stratum, and if that is
    # still alone, the largest stratum.
    strata = strata.copy()
    rare = strata.map(strata.value_counts()) < 2
    strata[rare] = "label " + labels[rare]
    rare = strata.map(strata.value_counts()) < 2
    strata[rare] = strata.value_counts().index[0]
    return strata


def ensure_external(
    manifest: pd.DataFrame,
    *,
    fraction: float = 0.05,
    seed: int = 0,
    source: str = "train",
    what: str = "dataset",
    stratify: Sequence[str] = ("label",),
) -> pd.DataFrame:
    """The manifest with an ``external`` split: unchanged if it has one, else carved from ``source``.

    ``round(fraction × patients of source)`` patients (at least one) move, with all their
    ``source`` rows, to a new ``external`` split. Only patients whose rows are all in ``source``
    are drawn, so the external set never shares a patient with ``val``, ``test`` or any other
    split. The draw is made over patients (one entry each) with scikit-learn's
    ``train_test_split(..., stratify=...)``: that gives the exact number of patients, seeded, with
    the strata's proportions kept — ``StratifiedGroupKFold`` only makes folds of size 1/k and
    ``GroupShuffleSplit`` does not stratify. Strata are the patient's label (its highest) and the
    first row's value of any other ``stratify`` column (a stratum of one patient joins its label's
    stratum); where there are more strata than patients to draw, the label alone is used, and
    where even that cannot be, a plain seeded draw.

    ``fraction`` must be in (0, 0.5]. A missing ``source`` split, too few eligible patients, or a
    carve that would leave ``external`` or ``source`` without every class is an
    :class:`~trustmed.errors.InputError` naming ``what`` and the numbers.

    >>> df = pd.DataFrame({"sample_id": list("abcdefgh"), "path": list("abcdefgh"),
    ...                    "label": [0, 1] * 4, "split": ["train"] * 8,
    ...                    "patient_id": ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]})
    >>> out = ensure_external(df, fraction=0.25, seed=0)
    >>> out["split"].value_counts().to_dict(), sorted(out.loc[out["split"] == "external", "label"])
    ({'train': 6, 'external': 2}, [0, 1])
    >>> ensure_external(out, fraction=0.5) is out
    True
    """
    from sklearn.model_selection import train_test_split

    missing = [c for c in ("split", "label", "patient_id", *stratify) if c not in manifest.columns]
    if missing:
        raise InputError(f"{what}: cannot carve an external split, missing column(s) {', '.join(missing)}")
    if (manifest["split"].astype(str) == "external").any():
        return manifest
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 0.5:
        raise InputError(f"{what}: external fraction must be in (0, 0.5], got {fraction!r}")
    split = manifest["split"].astype(str)
    in_source = split == source
    if not in_source.any():
        counts = ", ".join(f"{k} {v}" for k, v in split.value_counts().items())
        raise InputError(f"{what}: no {source!r} rows to carve an external split from (splits: {counts})")
    patients = manifest["patient_id"].astype(str)
    elsewhere = set(patients[~in_source])
    source_patients = patients[in_source].unique()
    eligible = sorted(set(source_patients) - elsewhere)
    n_carve = max(1, round(fraction * len(source_patients)))
    if n_carve >= len(eligible):
        raise InputError(
            f"{what}: cannot carve {n_carve} external patient(s) ({fraction:g} of {len(source_patients)} "
            f"in {source!r}): only {len(eligible)} of them have no rows in another split, "
            "and at least one must stay"
        )
    columns = list(dict.fromkeys(("label", *stratify)))
    drawn = in_source & patients.isin(eligible)
    rows = manifest.loc[drawn, columns].assign(patient_id=patients[drawn])
    chosen = None
    for by in dict.fromkeys([tuple(columns), ("label",), ()]):
        strata = None
        if by:
            strata = _merge_rare(_patient_strata(rows, by), _patient_strata(rows, ("label",))).loc[eligible]
        try:
            _, chosen = train_test_split(
                np.asarray(eligible, dtype=object), test_size=n_carve, random_state=seed, stratify=strata
            )
        except ValueError:  # a stratum with one patient, or fewer patients drawn than strata
            continue
        log.info("%s: external patients stratified by %s", what, " x ".join(by) or "nothing")
        break
    moved = in_source & patients.isin(set(chosen))
    out = manifest.copy()
    out.loc[moved, "split"] = "external"
    classes = np.unique(manifest.loc[in_source, "label"]).tolist()
    for name, mask in (("external", moved), (source, in_source & ~moved)):
        found = np.unique(manifest.loc[mask, "label"]).tolist()
        if found != classes or len(classes) < 2:
            raise InputError(
                f"{what}: carving {n_carve} of {len(source_patients)} {source!r} patients "
                f"({int(moved.sum())} of {int(in_source.sum())} rows) leaves {name!r} with label(s) "
                f"{found}; both {source!r} and 'external' need every class of {classes}, at least two"
            )
    log.info(
        "%s: carved an external split of %d rows (%d of %d %r patients, fraction %g, seed %d)",
        what,
        int(moved.sum()),
        len(chosen),
        len(source_patients),
        source,
        fraction,
        seed,
    )
    return out


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The split of every row, ``sample_id, split``, to save with a run and re-apply later.

    >>> split_table(pd.DataFrame({"sample_id": [1, 2], "split": ["train", "external"], "label": [0, 1]}))
      sample_id     split
    0         1     train
    1         2  external
    """
    return pd.DataFrame(
        {
            "sample_id": manifest["sample_id"].astype(str).to_numpy(),
            "split": manifest["split"].astype(str).to_numpy(),
        }
    )


def apply_split_table(manifest: pd.DataFrame, table: pd.DataFrame, what: str = "dataset") -> pd.DataFrame:
    """The manifest with the splits of a saved :func:`split_table` re-applied.

    Rows of ``manifest`` absent from ``table`` keep their split. A ``sample_id`` of ``table``
    that ``manifest`` lacks, a missing column, a repeated ``sample_id`` or a blank split is an
    :class:`~trustmed.errors.InputError` naming ``what`` (and the first such id).

    >>> df = pd.DataFrame({"sample_id": ["a", "b", "c"], "split": ["train", "train", "test"]})
    >>> apply_split_table(df, pd.DataFrame({"sample_id": ["b"], "split": ["external"]}))["split"].tolist()
    ['train', 'external', 'test']
    """
    missing = [c for c in ("sample_id", "split") if c not in table.columns]
    if missing:
        raise InputError(
            f"{what}: split table lacks column(s) {', '.join(missing)}; "
            f"has {', '.join(map(str, table.columns))}"
        )
    ids = table["sample_id"].astype(str)
    if ids.duplicated().any():
        raise InputError(f"{what}: split table lists sample_id {ids[ids.duplicated()].iloc[0]!r} twice")
    if table["split"].isna().any():
        raise InputError(
            f"{what}: split table has no split for sample_id {ids[table['split'].isna()].iloc[0]!r}"
        )
    known = manifest["sample_id"].astype(str)
    absent = ~ids.isin(set(known))
    if absent.any():
        raise InputError(
            f"{what}: split table names {int(absent.sum())} sample_id(s) not in the manifest "
            f"(first: {ids[absent].iloc[0]!r})"
        )
    saved = pd.Series(table["split"].astype(str).to_numpy(), index=ids.to_numpy())
    out = manifest.copy()
    out["split"] = known.map(saved).fillna(out["split"]).to_numpy()
    return out
