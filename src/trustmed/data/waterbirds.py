"""Waterbirds (Sagawa et al., "Distributionally Robust Neural Networks for Group Shifts", ICLR 2020,
arXiv 1911.08731), read from its published ``metadata.csv`` layout.

The file has one row per image: ``img_id``, ``img_filename`` (relative to the dataset folder),
``y`` (0 = landbird, 1 = waterbird), ``split`` (0 = train, 1 = val, 2 = test) and ``place``
(0 = land, 1 = water background). Groups are label x place, named ``y=<y>&place=<place>``. Extra
columns of other releases (e.g. ``place_filename``) are kept. ColoredDigits
(:mod:`trustmed.data.synth.digits`) is written in the same layout, so this loader reads it too.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "metadata.csv").write_text("img_id,img_filename,y,split,place\\n1,a/1.jpg,1,0,0\\n")
>>> load_waterbirds(root)[["sample_id", "label", "split", "group"]].values.tolist()
[['1', 1, 'train', 'y=1&place=0']]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trustmed.data.manifest import check_images, validate_manifest
from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = ["SPLIT_CODES", "WATERBIRDS_COLUMNS", "group_names", "load_waterbirds"]

WATERBIRDS_COLUMNS: tuple[str, ...] = ("img_id", "img_filename", "y", "split", "place")
SPLIT_CODES: dict[int, str] = {0: "train", 1: "val", 2: "test"}


def group_names(labels: pd.Series, places: pd.Series) -> pd.Series:
    """Waterbirds group names ``y=<label>&place=<place>`` (METRICS.md's ``attr=value`` joined by ``&``)."""
    return "y=" + labels.astype(int).astype(str) + "&place=" + places.astype(int).astype(str)


def load_waterbirds(root: str | Path, *, require_images: bool = False) -> pd.DataFrame:
    """Read ``<root>/metadata.csv`` into a manifest with ``place`` and ``group`` attributes.

    Parameters
    ----------
    root : the dataset folder (holding ``metadata.csv`` and the image folders), or the CSV itself.
    require_images : check that every image exists (otherwise metadata-only mode: counts and
        groups work without the images).

    Returns
    -------
    DataFrame with ``sample_id, path, label, split, patient_id, place, group`` and any extra columns.
    """
    root = Path(root)
    csv = root if root.suffix == ".csv" else root / "metadata.csv"
    if not csv.is_file():
        raise InputError(f"Waterbirds metadata not found: {csv} (expected the dataset's metadata.csv)")
    meta = read_csv(csv, allow_empty=True)
    missing = [c for c in WATERBIRDS_COLUMNS if c not in meta.columns]
    if missing:
        raise InputError(
            f"{csv}: missing column(s) {', '.join(missing)}; expected {', '.join(WATERBIRDS_COLUMNS)}, "
            f"found {', '.join(map(str, meta.columns))}"
        )
    for col, allowed in (("y", {0, 1}), ("split", set(SPLIT_CODES)), ("place", {0, 1})):
        values = pd.to_numeric(meta[col], errors="coerce")
        bad = ~values.isin(allowed)
        if bad.any():
            first = meta.loc[bad, col].iloc[0]
            raise InputError(f"{csv}: column {col!r} has value {first}; expected one of {sorted(allowed)}")
        meta[col] = values.astype(int)
    extras = [c for c in meta.columns if c not in WATERBIRDS_COLUMNS]
    manifest = pd.DataFrame(
        {
            "sample_id": meta["img_id"].astype(str),
            "path": meta["img_filename"].astype(str),
            "label": meta["y"],
            "split": meta["split"].map(SPLIT_CODES),
            "patient_id": meta["img_id"].astype(str),
            "place": meta["place"],
            "group": group_names(meta["y"], meta["place"]),
        }
    )
    for col in extras:
        manifest[col] = meta[col].to_numpy()
    manifest = validate_manifest(manifest, attributes=["place", "group"], where=str(csv))
    if require_images:
        check_images(manifest, csv.parent)
    return manifest
