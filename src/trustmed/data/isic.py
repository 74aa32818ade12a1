"""ISIC 2019 and ISIC 2020 loaders: the official ground-truth (and metadata) CSVs → a manifest.

ISIC 2019 (Tschandl et al., "The HAM10000 dataset", Sci. Data 2018; Codella et al., arXiv
1710.05006; Combalia et al., "BCN20000", arXiv 1908.02288) ships
``ISIC_2019_Training_GroundTruth.csv`` (``image`` and one-hot ``MEL NV BCC AK BKL DF VASC SCC
UNK`` as 1.0 / 0.0) and ``ISIC_2019_Training_Metadata.csv`` (``image, age_approx,
anatom_site_general, lesion_id, sex``), joined on ``image``; images are
``ISIC_2019_Training_Input/<image>.jpg`` (some names end in ``_downsampled``, as the files do).
``label`` = 1 for melanoma, basal-cell or squamous-cell carcinoma (MEL ∪ BCC ∪ SCC), plus actinic
keratosis with ``include_ak=True``. There are no patient ids: ``lesion_id`` stands in for the
patient (images of one lesion never straddle splits), the image name where it is blank.

ISIC 2020 (Rotemberg et al., "A patient-centric dataset of images and metadata for identifying
melanomas using clinical context", Sci. Data 2021, arXiv 2008.07360) ships
``ISIC_2020_Training_GroundTruth.csv`` (or ``_v2``: ``image_name, patient_id, [lesion_id,] sex,
age_approx, anatom_site_general_challenge, diagnosis, benign_malignant, target``); images are
``train/<image_name>.jpg``. ``label`` = ``target`` (1 = melanoma). Many images share a patient,
so the split is by patient. ``ISIC_2020_Training_Duplicates.csv`` (``image_name_1,
image_name_2``), when present, lists near-duplicate pairs; the second of each pair is dropped
(``drop_duplicates``).

Neither ships a split: a seeded split stratified by label × sex is made, at patient (lesion)
level, with ``split_fractions`` (default 70 % train, 10 % val, 5 % external, 15 % test). Both give
``sex`` (``male`` / ``female`` / ``unknown``; blank in the CSVs), ``age`` (``age_approx``, in steps
of five years, sometimes blank), ``age_bin``, ``site`` and ``diagnosis``. Neither gives skin type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.chexpert import read_csv_checked
from trustmed.data.manifest import age_bins, stratified_split, validate_manifest
from trustmed.errors import InputError

__all__ = [
    "DEFAULT_SPLIT",
    "ISIC2019_CLASSES",
    "ISIC2019_MALIGNANT",
    "load_isic2019",
    "load_isic2020",
]

log = logging.getLogger(__name__)

ISIC2019_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC2019_MALIGNANT: tuple[str, ...] = ("MEL", "BCC", "SCC")
DEFAULT_SPLIT: dict[str, float] = {"train": 0.70, "val": 0.10, "external": 0.05, "test": 0.15}
_GT2019 = "ISIC_2019_Training_GroundTruth.csv"
_META2019 = "ISIC_2019_Training_Metadata.csv"
_GT2020 = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv")
_DUP2020 = "ISIC_2020_Training_Duplicates.csv"


def _root(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise InputError(f"{what} root not found: {root}")
    return root.parent if root.is_file() else root


def _image_dir(root: Path, image_dir: str | None, candidates: tuple[str, ...]) -> str:
    if image_dir is not None:
        return image_dir
    return next((c for c in candidates if (root / c).is_dir()), "")


def _sex(values: pd.Series) -> np.ndarray:
    sex = values.fillna("").astype(str).str.strip().str.lower()
    return np.where(sex.isin(["male", "female"]), sex, "unknown")


def _split(out: pd.DataFrame, split_fractions: Mapping[str, float] | None, seed: int) -> pd.Series:
    return stratified_split(out, dict(split_fractions or DEFAULT_SPLIT), seed=seed, stratify=("label", "sex"))


def load_isic2019(
    root: str | Path,
    *,
    include_ak: bool = False,
    drop_unknown_class: bool = False,
    image_dir: str | None = None,
    split_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Read ISIC 2019's ground truth and metadata under ``root`` into a manifest.

    Parameters
    ----------
    root : folder holding the two CSVs (and the images).
    include_ak : count actinic keratosis (AK) as malignant too.
    drop_unknown_class : drop rows whose class is ``UNK`` (none in the training set as published).
    image_dir : folder of ``<image>.jpg`` relative to ``root``; default
        ``ISIC_2019_Training_Input`` if it exists, else ``root``.
    split_fractions, seed : the seeded lesion-level split.
    """
    root = _root(root, "ISIC 2019")
    gt_path, meta_path = root / _GT2019, root / _META2019
    gt = read_csv_checked(gt_path, ("image", *ISIC2019_CLASSES), dtype={"image": str})
    meta = read_csv_checked(
        meta_path, ("image", "age_approx", "anatom_site_general", "lesion_id", "sex"), dtype={"image": str}
    )
    onehot = gt[list(ISIC2019_CLASSES)].apply(pd.to_numeric, errors="coerce")
    bad = onehot.isna().any(axis=1) | (onehot.sum(axis=1) != 1)
    if bad.any():
        raise InputError(
            f"{gt_path}: each row must have exactly one class set to 1.0; row for image "
            f"{gt['image'][bad].iloc[0]!r} does not"
        )
    df = gt[["image"]].merge(meta.drop_duplicates("image"), on="image", how="left", validate="one_to_one")
    diagnosis = np.asarray(ISIC2019_CLASSES)[onehot.to_numpy().argmax(axis=1)]
    malignant = list(ISIC2019_MALIGNANT) + (["AK"] if include_ak else [])
    lesion = df["lesion_id"].astype("string").str.strip()
    folder = _image_dir(root, image_dir, ("ISIC_2019_Training_Input",))
    out = pd.DataFrame(
        {
            "sample_id": df["image"].to_numpy(),
            "path": [str(Path(folder) / f"{name}.jpg") for name in df["image"]],
            "label": np.isin(diagnosis, malignant).astype(int),
            "split": None,
            "patient_id": lesion.where(lesion.notna() & (lesion != ""), df["image"]).astype(str).to_numpy(),
            "sex": _sex(df["sex"]),
            "age": pd.to_numeric(df["age_approx"], errors="coerce").to_numpy(),
            "site": df["anatom_site_general"].fillna("unknown").astype(str).to_numpy(),
            "diagnosis": diagnosis,
        }
    )
    if drop_unknown_class:
        out = out[out["diagnosis"] != "UNK"].reset_index(drop=True)
    out["age_bin"] = age_bins(out["age"]).to_numpy()
    out["split"] = _split(out, split_fractions, seed)
    return validate_manifest(out, attributes=("sex", "age_bin"), where=str(gt_path))


def load_isic2020(
    root: str | Path,
    *,
    drop_duplicates: bool = True,
    image_dir: str | None = None,
    split_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Read ISIC 2020's training ground truth under ``root`` into a manifest.

    Parameters
    ----------
    root : folder holding ``ISIC_2020_Training_GroundTruth.csv`` (or ``_v2``) and the images.
    drop_duplicates : drop the second image of each pair in ``ISIC_2020_Training_Duplicates.csv``.
    image_dir : folder of ``<image_name>.jpg`` relative to ``root``; default ``train``,
        ``ISIC_2020_Training_JPEG/train`` or ``ISIC_2020_Training_JPEG`` if one exists, else ``root``.
    split_fractions, seed : the seeded patient-level split.
    """
    root = _root(root, "ISIC 2020")
    gt_path = next((root / n for n in _GT2020 if (root / n).is_file()), root / _GT2020[-1])
    required = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "target")
    df = read_csv_checked(gt_path, required, dtype={"image_name": str, "patient_id": str, "sex": str})
    target = pd.to_numeric(df["target"], errors="coerce")
    if not target.isin([0, 1]).all():
        raise InputError(
            f"{gt_path}: column 'target' must be 0 or 1, got {df['target'][~target.isin([0, 1])].iloc[0]!r}"
        )
    dup_path = root / _DUP2020
    if drop_duplicates and dup_path.is_file():
        dups = read_csv_checked(dup_path, ("image_name_1", "image_name_2"), dtype={"image_name_2": str})
        drop = df["image_name"].isin(dups["image_name_2"])
        log.info("dropped %d near-duplicate images listed in %s", int(drop.sum()), dup_path)
        df, target = df[~drop].reset_index(drop=True), target[~drop].reset_index(drop=True)
    folder = _image_dir(
        root, image_dir, ("train", "ISIC_2020_Training_JPEG/train", "ISIC_2020_Training_JPEG")
    )
    patient = df["patient_id"].fillna("").astype(str).str.strip()
    out = pd.DataFrame(
        {
            "sample_id": df["image_name"].to_numpy(),
            "path": [str(Path(folder) / f"{name}.jpg") for name in df["image_name"]],
            "label": target.astype(int).to_numpy(),
            "split": None,
            "patient_id": patient.where(patient != "", df["image_name"]).to_numpy(),
            "sex": _sex(df["sex"]),
            "age": pd.to_numeric(df["age_approx"], errors="coerce").to_numpy(),
            "site": df["anatom_site_general_challenge"].fillna("unknown").astype(str).to_numpy(),
            "diagnosis": df["diagnosis"].fillna("unknown").astype(str).to_numpy()
            if "diagnosis" in df.columns
            else "unknown",
        }
    )
    out["age_bin"] = age_bins(out["age"]).to_numpy()
    out["split"] = _split(out, split_fractions, seed)
    return validate_manifest(out, attributes=("sex", "age_bin"), where=str(gt_path))
