"""MIMIC-CXR-JPG loader, with sex, age and race from MIMIC-IV → a manifest.

MIMIC-CXR-JPG (Johnson et al., "MIMIC-CXR-JPG, a large publicly available database of labeled
chest radiographs", arXiv 1901.07042) ships three tables, plain or gzipped:
``mimic-cxr-2.0.0-metadata.csv`` (one row per image: ``dicom_id, subject_id, study_id,
ViewPosition, …``), ``mimic-cxr-2.0.0-chexpert.csv`` (one row per study: ``subject_id, study_id``
and the 14 CheXpert-labeller findings coded 1.0 / 0.0 / −1.0 / blank) and
``mimic-cxr-2.0.0-split.csv`` (``dicom_id, study_id, subject_id, split`` with ``train``,
``validate``, ``test``). Images are ``files/p{first two digits of subject_id}/p{subject_id}/
s{study_id}/{dicom_id}.jpg``. Demographics come from MIMIC-IV (Johnson et al., "MIMIC-IV, a freely
accessible electronic health record dataset", Scientific Data 2023): ``patients.csv(.gz)``
(``subject_id, gender, anchor_age``) and ``admissions.csv(.gz)`` (``subject_id, race``; ``ethnicity``
in MIMIC-IV 1.0).

Images and labels are joined on ``(subject_id, study_id)``; images of studies without labels are
dropped (and counted in the log). ``sex`` is ``male`` / ``female`` from ``gender`` M / F; ``age`` is
``anchor_age`` (the age in the patient's anchor year — MIMIC shifts dates, so this is the only age
it gives); ``race`` is the most frequent known value over the subject's admissions, coarsened to
``white``, ``black``, ``asian``, ``hispanic``, ``other`` or ``unknown`` (``race_detail`` keeps the
original). Without the MIMIC-IV tables, sex, age and race are ``unknown`` (a warning says so).
The official split is used (``validate`` → ``val``) unless ``split="patient"`` re-splits by subject.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.chexpert import FINDINGS, apply_uncertainty, label_codes, read_csv_checked
from trustmed.data.manifest import age_bins, stratified_split, validate_manifest
from trustmed.errors import InputError

__all__ = ["DEFAULT_SPLIT", "PREFIX", "RACE_GROUPS", "load_mimic_cxr", "race_group"]

log = logging.getLogger(__name__)

PREFIX = "mimic-cxr-2.0.0"
DEFAULT_SPLIT: dict[str, float] = {"train": 0.70, "val": 0.10, "external": 0.05, "test": 0.15}
RACE_GROUPS: tuple[str, ...] = ("white", "black", "asian", "hispanic", "other", "unknown")
_UNKNOWN_RACE = ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "")
_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_LABELERS = ("chexpert", "negbio")


def race_group(race: pd.Series) -> pd.Series:
    """MIMIC-IV ``race`` strings → :data:`RACE_GROUPS`.

    >>> race_group(pd.Series(["WHITE - RUSSIAN", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - CUBAN",
    ...                       "ASIAN - CHINESE", "AMERICAN INDIAN/ALASKA NATIVE", "UNABLE TO OBTAIN"])
    ...            ).tolist()
    ['white', 'black', 'hispanic', 'asian', 'other', 'unknown']
    """
    text = race.fillna("").astype(str).str.strip().str.upper()
    conditions = [
        text.isin(_UNKNOWN_RACE) | text.str.startswith("UNKNOWN"),
        text.str.startswith("WHITE"),
        text.str.startswith("BLACK"),
        text.str.startswith("ASIAN"),
        text.str.startswith("HISPANIC") | text.str.contains("LATINO"),
    ]
    return pd.Series(
        np.select(conditions, ["unknown", "white", "black", "asian", "hispanic"], "other"), index=race.index
    )


def _table(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _required_table(root: Path, stem: str) -> Path:
    path = _table(root, stem)
    if path is None:
        raise InputError(
            f"{root}: {stem}.csv(.gz) not found (expected the official MIMIC-CXR-JPG file there)"
        )
    return path


def _mimic_iv_folders(root: Path, mimic_iv: str | Path | None) -> list[Path]:
    if mimic_iv is not None:
        base = Path(mimic_iv)
        if not base.is_dir():
            raise InputError(f"mimic_iv folder not found: {base}")
        return [base, base / "hosp"]
    return [root, root / "hosp", root / "mimic-iv", root / "mimic-iv" / "hosp"]


def _demographics(root: Path, mimic_iv: str | Path | None) -> pd.DataFrame | None:
    folders = _mimic_iv_folders(root, mimic_iv)
    patients_path = next((p for f in folders if (p := _table(f, "patients")) is not None), None)
    if patients_path is None:
        log.warning("MIMIC-IV patients.csv(.gz) not found under %s; sex, age and race are unknown", root)
        return None
    patients = read_csv_checked(patients_path, ("subject_id", "gender", "anchor_age"))
    demo = pd.DataFrame(
        {
            "subject_id": patients["subject_id"].astype(np.int64),
            "sex": patients["gender"].map({"M": "male", "F": "female"}).fillna("unknown"),
            "age": pd.to_numeric(patients["anchor_age"], errors="coerce"),
        }
    ).drop_duplicates("subject_id")
    admissions_path = next(
        (p for f in [patients_path.parent, *folders] if (p := _table(f, "admissions")) is not None), None
    )
    if admissions_path is None:
        log.warning("MIMIC-IV admissions.csv(.gz) not found next to %s; race is unknown", patients_path)
        demo["race_detail"] = "UNKNOWN"
        demo["race"] = "unknown"
        return demo
    header = pd.read_csv(admissions_path, nrows=0).columns
    column = "race" if "race" in header else "ethnicity"
    admissions = read_csv_checked(admissions_path, ("subject_id", column), dtype={column: str})
    admissions = admissions[["subject_id", column]].rename(columns={column: "race_detail"})
    admissions["race"] = race_group(admissions["race_detail"])
    known = admissions[admissions["race"] != "unknown"]
    # The most frequent known value per subject; ties go to the alphabetically first.
    mode = (
        known.groupby(["subject_id", "race_detail", "race"], as_index=False)
        .size()
        .sort_values(["subject_id", "size", "race_detail"], ascending=[True, False, True])
        .drop_duplicates("subject_id")[["subject_id", "race_detail", "race"]]
    )
    demo = demo.merge(mode, on="subject_id", how="left")
    demo["race_detail"] = demo["race_detail"].fillna("UNKNOWN")
    demo["race"] = demo["race"].fillna("unknown")
    return demo


def load_mimic_cxr(
    root: str | Path,
    *,
    finding: str = "Pleural Effusion",
    uncertainty: str = "u_ones",
    labeler: str = "chexpert",
    views: Sequence[str] | None = ("PA", "AP"),
    mimic_iv: str | Path | None = None,
    split: str = "official",
    split_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Read MIMIC-CXR-JPG's metadata, label and split tables under ``root`` into a manifest.

    Parameters
    ----------
    root : the MIMIC-CXR-JPG folder (the three ``mimic-cxr-2.0.0-*.csv(.gz)`` tables and ``files/``).
    finding : the target finding, one of :data:`trustmed.data.chexpert.FINDINGS`.
    uncertainty : ``u_ones``, ``u_zeros`` or ``ignore`` (as for CheXpert).
    labeler : ``chexpert`` or ``negbio`` (which label table to read).
    views : ``ViewPosition`` values kept (default ``PA``, ``AP``); ``None`` keeps every image.
    mimic_iv : folder with MIMIC-IV ``patients.csv(.gz)`` and ``admissions.csv(.gz)`` (or their
        ``hosp/`` folder); default: ``root``, ``root/hosp``, ``root/mimic-iv`` or ``root/mimic-iv/hosp``.
    split : ``official`` or ``patient`` (a seeded subject-level split by ``split_fractions``,
        stratified by label × sex).
    split_fractions, seed : the subject-level split.
    """
    if finding not in FINDINGS:
        raise InputError(f"MIMIC-CXR finding must be one of {list(FINDINGS)}, got {finding!r}")
    if labeler not in _LABELERS:
        raise InputError(f"MIMIC-CXR labeler must be one of {list(_LABELERS)}, got {labeler!r}")
    if split not in ("official", "patient"):
        raise InputError(f"MIMIC-CXR split must be 'official' or 'patient', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"MIMIC-CXR-JPG root not found: {root}")
    ids = ("dicom_id", "subject_id", "study_id")
    meta_path = _required_table(root, f"{PREFIX}-metadata")
    meta = read_csv_checked(meta_path, (*ids, "ViewPosition"), dtype={"dicom_id": str, "ViewPosition": str})
    labels_path = _required_table(root, f"{PREFIX}-{labeler}")
    labels = read_csv_checked(labels_path, ("subject_id", "study_id", finding))
    split_path = _required_table(root, f"{PREFIX}-split")
    splits = read_csv_checked(split_path, (*ids, "split"), dtype={"dicom_id": str, "split": str})

    meta["ViewPosition"] = meta["ViewPosition"].fillna("").astype(str).str.strip()
    if views is not None:
        meta = meta[meta["ViewPosition"].isin(list(views))]
        if meta.empty:
            raise InputError(f"{meta_path}: no images with ViewPosition in {list(views)}")
    code, keep = apply_uncertainty(labels[finding], uncertainty, where=str(labels_path))
    labels = pd.DataFrame(
        {
            "subject_id": labels["subject_id"].astype(np.int64),
            "study_id": labels["study_id"].astype(np.int64),
            "label": code,
            "label_code": label_codes(labels[finding]),
        }
    )[keep].drop_duplicates(["subject_id", "study_id"])
    df = meta[list(ids) + ["ViewPosition"]].astype({"subject_id": np.int64, "study_id": np.int64})
    joined = df.merge(labels, on=["subject_id", "study_id"], how="inner", validate="many_to_one")
    if len(joined) < len(df):
        log.info(
            "%d images without a %s label (or uncertain, dropped) left out", len(df) - len(joined), finding
        )
    if joined.empty:
        raise InputError(f"{labels_path}: no image of {meta_path.name} has a label for {finding!r}")
    joined = joined.merge(
        splits[["dicom_id", "split"]].drop_duplicates("dicom_id"), on="dicom_id", how="left"
    )
    unknown_split = ~joined["split"].isin(list(_SPLITS))
    if unknown_split.any():
        raise InputError(
            f"{split_path}: {int(unknown_split.sum())} image(s) with no or an unknown split "
            f"(e.g. dicom_id {joined['dicom_id'][unknown_split].iloc[0]!r}); expected train, validate, test"
        )
    subject = joined["subject_id"].astype(str)
    out = pd.DataFrame(
        {
            "sample_id": joined["dicom_id"].to_numpy(),
            "path": (
                "files/p"
                + subject.str[:2]
                + "/p"
                + subject
                + "/s"
                + joined["study_id"].astype(str)
                + "/"
                + joined["dicom_id"]
                + ".jpg"
            ).to_numpy(),
            "label": joined["label"].to_numpy(),
            "split": joined["split"].map(_SPLITS).to_numpy(),
            "patient_id": subject.to_numpy(),
            "study_id": joined["study_id"].to_numpy(),
            "view": joined["ViewPosition"].replace("", "unknown").to_numpy(),
            "label_code": joined["label_code"].to_numpy(),
        }
    )
    demo = _demographics(root, mimic_iv)
    if demo is None:
        out["sex"], out["age"], out["race"], out["race_detail"] = "unknown", np.nan, "unknown", "UNKNOWN"
    else:
        demo = demo.assign(patient_id=demo["subject_id"].astype(str)).drop(columns="subject_id")
        out = out.merge(demo, on="patient_id", how="left")
        out["sex"] = out["sex"].fillna("unknown")
        out["race"] = out["race"].fillna("unknown")
        out["race_detail"] = out["race_detail"].fillna("UNKNOWN")
    out["age_bin"] = age_bins(out["age"]).to_numpy()
    if split == "patient":
        out["split"] = stratified_split(
            out, dict(split_fractions or DEFAULT_SPLIT), seed=seed, stratify=("label", "sex")
        )
    return validate_manifest(out, attributes=("sex", "age_bin", "race"), where=str(meta_path))
