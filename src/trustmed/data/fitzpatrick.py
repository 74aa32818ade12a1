"""Fitzpatrick17k loader: the official ``fitzpatrick17k.csv`` (and SynthSkin) → a manifest.

Fitzpatrick17k (Groh et al., "Evaluating Deep Neural Networks Trained on Clinical Images in
Dermatology with the Fitzpatrick 17k Dataset", CVPR-W 2021, arXiv 2104.09957) is distributed as
``fitzpatrick17k.csv`` with the columns ``md5hash, fitzpatrick_scale, fitzpatrick_centaur, label,
nine_partition_label, three_partition_label, qc, url, url_alphanum``; images are fetched by the
user and named ``<md5hash>.jpg``. ``fitzpatrick_scale`` is 1–6, or −1 when the skin type is unknown.

The manifest gets ``label`` = 1 for ``three_partition_label == "malignant"``, ``skin_tone``
(light = types below ``dark_threshold``, dark = the rest, unknown = −1), ``fitzpatrick``,
``fitzpatrick_centaur``, ``qc``, ``diagnosis`` (the fine label), ``sex``/``age``/``age_bin``
(``unknown`` unless a side file gives them) and ``split``.

The real dataset has no split, no patients, no sex or age. When a side file
(``synthskin_meta.csv`` or ``fitzpatrick17k_meta.csv``: ``md5hash`` plus any of ``split``, ``sex``,
``age``, ``patient_id``) sits next to the CSV, it is merged; otherwise a seeded split stratified by
label × skin tone is made (``split_fractions``, default 70 % train, 10 % val, 5 % external,
15 % test).

Images are needed only when a model reads them (:class:`trustmed.data.images.ImageDataset`
raises an error naming the first missing file); the table alone is enough for counts and cards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.manifest import age_bins, skin_tone_from_fitzpatrick, stratified_split, validate_manifest
from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = ["CSV_NAME", "DEFAULT_SPLIT", "OFFICIAL_COLUMNS", "SIDE_FILES", "load_fitzpatrick17k"]

log = logging.getLogger(__name__)

CSV_NAME = "fitzpatrick17k.csv"
OFFICIAL_COLUMNS: tuple[str, ...] = (
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
)
_REQUIRED = ("md5hash", "fitzpatrick_scale", "three_partition_label")
SIDE_FILES: tuple[str, ...] = ("synthskin_meta.csv", "fitzpatrick17k_meta.csv")
DEFAULT_SPLIT: dict[str, float] = {"train": 0.70, "val": 0.10, "external": 0.05, "test": 0.15}
_LABELS = ("malignant", "malignant_vs_benign")


def _csv_path(root: Path) -> Path:
    if root.is_file():
        return root
    if not root.exists():
        raise InputError(f"Fitzpatrick17k root not found: {root}")
    path = root / CSV_NAME
    if not path.is_file():
        raise InputError(f"{root}: {CSV_NAME} not found (expected the official Fitzpatrick17k CSV there)")
    return path


def _image_dir(folder: Path, image_dir: str | None) -> str:
    if image_dir is not None:
        return image_dir
    return "images" if (folder / "images").is_dir() else ""


def _merge_side_file(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    for name in SIDE_FILES:
        side_path = folder / name
        if not side_path.is_file():
            continue
        side = read_csv(
            side_path,
            dtype={"md5hash": str, "patient_id": str, "split": str, "sex": str},
            required=("md5hash",),
            allow_empty=True,
        )
        keep = [c for c in ("md5hash", "split", "sex", "age", "patient_id") if c in side.columns]
        merged = df.merge(
            side[keep].drop_duplicates("md5hash"), on="md5hash", how="left", validate="one_to_one"
        )
        log.info("merged %s (%s)", side_path, ", ".join(keep[1:]))
        return merged
    return df


def load_fitzpatrick17k(
    root: str | Path,
    *,
    dark_threshold: int = 4,
    label: str = "malignant",
    image_dir: str | None = None,
    split_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    drop_qc: Sequence[str] = (),
    drop_unknown_skin: bool = False,
) -> pd.DataFrame:
    """Read ``fitzpatrick17k.csv`` under ``root`` into a manifest.

    Parameters
    ----------
    root : folder holding ``fitzpatrick17k.csv`` (and the images), or the CSV itself.
    dark_threshold : Fitzpatrick types ``>= dark_threshold`` are ``dark`` (default 4: light 1–3, dark 4–6).
    label : ``"malignant"`` (malignant vs benign + non-neoplastic) or ``"malignant_vs_benign"``
        (non-neoplastic rows dropped).
    image_dir : folder of ``<md5hash>.jpg`` relative to ``root``; default ``images`` if it exists,
        else ``root`` itself.
    split_fractions, seed : the seeded stratified split used when no side file gives ``split``.
    drop_qc : ``qc`` values whose rows are dropped (e.g. ``["3 Wrongly labelled"]``).
    drop_unknown_skin : drop rows with an unknown skin type (−1).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "fitzpatrick17k.csv").write_text(
    ...     "md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,"
    ...     "three_partition_label,qc,url,url_alphanum\\n"
    ...     "aa,2,2,melanoma,malignant melanoma,malignant,,u,u\\n"
    ...     "bb,-1,5,psoriasis,inflammatory,non-neoplastic,,u,u\\n")
    >>> load_fitzpatrick17k(root, split_fractions={"test": 1.0})[["label", "skin_tone"]].values.tolist()
    [[1, 'light'], [0, 'unknown']]
    """
    if label not in _LABELS:
        raise InputError(f"Fitzpatrick17k label must be one of {list(_LABELS)}, got {label!r}")
    csv_path = _csv_path(Path(root))
    folder = csv_path.parent
    df = read_csv(csv_path, dtype={"md5hash": str, "qc": str, "label": str}, allow_empty=True)
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise InputError(
            f"{csv_path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"available: {', '.join(map(str, df.columns))}"
        )
    if df.empty:
        raise InputError(f"{csv_path}: no rows")
    scale = pd.to_numeric(df["fitzpatrick_scale"], errors="coerce")
    bad = ~(scale.isin([1, 2, 3, 4, 5, 6, -1]))
    if bad.any():
        raise InputError(
            f"{csv_path}: fitzpatrick_scale must be 1-6 or -1 (unknown), "
            f"got {df['fitzpatrick_scale'][bad].iloc[0]!r}"
        )
    partition = df["three_partition_label"].astype(str).str.strip().str.lower()
    unknown_partition = ~partition.isin(["benign", "malignant", "non-neoplastic"])
    if unknown_partition.any():
        raise InputError(
            f"{csv_path}: three_partition_label must be benign, malignant or non-neoplastic, "
            f"got {df['three_partition_label'][unknown_partition].iloc[0]!r}"
        )
    df = _merge_side_file(df, folder)
    out = pd.DataFrame(
        {
            "sample_id": df["md5hash"].astype(str),
            "path": [str(Path(_image_dir(folder, image_dir)) / f"{h}.jpg") for h in df["md5hash"]],
            "label": (partition == "malignant").astype(int).to_numpy(),
            "split": df["split"] if "split" in df.columns else None,
            "patient_id": df["patient_id"] if "patient_id" in df.columns else df["md5hash"].astype(str),
            "skin_tone": skin_tone_from_fitzpatrick(scale, dark_threshold=dark_threshold).to_numpy(),
            "fitzpatrick": scale.astype(int).to_numpy(),
            "fitzpatrick_centaur": pd.to_numeric(df.get("fitzpatrick_centaur"), errors="coerce")
            .fillna(-1)
            .astype(int)
            .to_numpy()
            if "fitzpatrick_centaur" in df.columns
            else -1,
            "sex": df["sex"].fillna("unknown").astype(str) if "sex" in df.columns else "unknown",
            "age": pd.to_numeric(df["age"], errors="coerce") if "age" in df.columns else np.nan,
            "diagnosis": df["label"].astype(str) if "label" in df.columns else "",
            "three_partition_label": partition.to_numpy(),
            "qc": df["qc"].fillna("").astype(str) if "qc" in df.columns else "",
        }
    )
    out["age_bin"] = age_bins(out["age"]).to_numpy()
    keep = np.ones(len(out), dtype=bool)
    if label == "malignant_vs_benign":
        keep &= (out["three_partition_label"] != "non-neoplastic").to_numpy()
    if drop_qc:
        keep &= ~out["qc"].isin(list(drop_qc)).to_numpy()
    if drop_unknown_skin:
        keep &= (out["skin_tone"] != "unknown").to_numpy()
    out = out[keep].reset_index(drop=True)
    if out.empty:
        raise InputError(
            f"{csv_path}: no rows left after filtering (label={label!r}, drop_qc={list(drop_qc)})"
        )
    out["patient_id"] = out["patient_id"].fillna(out["sample_id"])
    if out["split"].isna().any():
        no_split = out["split"].isna()
        fractions = dict(split_fractions or DEFAULT_SPLIT)
        made = stratified_split(out[no_split], fractions, seed=seed, stratify=("label", "skin_tone"))
        out.loc[no_split, "split"] = made
    return validate_manifest(out, attributes=("skin_tone",), where=str(csv_path))
