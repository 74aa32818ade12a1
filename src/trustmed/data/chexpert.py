"""CheXpert loader: the official ``train.csv`` / ``valid.csv`` → a manifest.

CheXpert (Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and
Expert Comparison", AAAI 2019, arXiv 1901.07031) ships ``train.csv`` (223,414 rows) and
``valid.csv`` (234 rows) with the columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and 14
findings (:data:`FINDINGS`). A finding is coded ``1.0`` (positive), ``0.0`` (negative), ``-1.0``
(uncertain) or left blank (not mentioned, read as negative). The paper's uncertainty policies are
options: ``u_ones`` (uncertain → positive), ``u_zeros`` (uncertain → negative) and ``ignore``
(uncertain rows dropped for the chosen finding).

Quirks handled: ``Path`` starts with the dataset folder's name as published
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), which is stripped and the
rest resolved against the folder holding the CSVs, whatever it is called; that folder may be
``root`` itself or one level below it. ``Sex`` is ``Male`` / ``Female`` / ``Unknown`` (→ ``male`` /
``female`` / ``unknown``); ``AP/PA`` is blank for lateral views. The patient id is the
``patientNNNNN`` part of the path.

The manifest gets ``label`` (the chosen finding after the policy), ``label_code`` (the original
code: ``1``, ``0``, ``-1`` or ``blank``), ``sex``, ``age``, ``age_bin``, ``view`` (``AP``, ``PA``,
``LL``, ``RL`` or ``lateral``), ``study``. Splits: ``official`` (train.csv → ``train``, valid.csv →
``val``) or ``patient`` (all rows re-split at patient level, stratified by label × sex).

The functions :func:`read_csv_checked` and :func:`apply_uncertainty` are shared with the MIMIC-CXR
loader, which uses the same labeller output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.manifest import age_bins, stratified_split, validate_manifest
from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_SPLIT",
    "FINDINGS",
    "UNCERTAINTY_POLICIES",
    "apply_uncertainty",
    "find_csv_folder",
    "label_codes",
    "load_chexpert",
    "read_csv_checked",
    "read_demographics",
    "race_group",
]

log = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CSV_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *FINDINGS)
UNCERTAINTY_POLICIES: tuple[str, ...] = ("u_ones", "u_zeros", "ignore")
DEFAULT_SPLIT: dict[str, float] = {"train": 0.70, "val": 0.10, "external": 0.05, "test": 0.15}
_SPLIT_MODES = ("official", "patient")
_IMAGE_TOP = ("train", "valid", "test")
_TOP_TUPLE = tuple(f"{t}/" for t in _IMAGE_TOP)


def read_csv_checked(
    path: Path, required: Sequence[str], *, dtype: Mapping[str, object] | None = None
) -> pd.DataFrame:
    """Read a CSV (``.csv`` or ``.csv.gz``) and check it has the ``required`` columns.

    A missing file, an unreadable file or a missing column is an :class:`InputError` naming the
    file (and the column, with the columns that are there).
    """
    if not path.is_file():
        raise InputError(f"{path}: not found")
    return read_csv(path, required=required, dtype=dtype)


def apply_uncertainty(codes: pd.Series, policy: str, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """CheXpert-labeller codes → (binary labels, rows kept) under an uncertainty ``policy``.

    Blank means "not mentioned" and is negative; ``-1`` is positive under ``u_ones``, negative under
    ``u_zeros`` and dropped under ``ignore``.

    >>> labels, keep = apply_uncertainty(pd.Series([1.0, 0.0, -1.0, None]), "ignore", where="x")
    >>> labels.tolist(), keep.tolist()
    ([1, 0, 0, 0], [True, True, False, True])
    """
    if policy not in UNCERTAINTY_POLICIES:
        raise InputError(f"uncertainty policy must be one of {list(UNCERTAINTY_POLICIES)}, got {policy!r}")
    values = pd.to_numeric(codes, errors="coerce")
    bad = codes.notna() & ~values.isin([1.0, 0.0, -1.0])
    if bad.any():
        raise InputError(
            f"{where}: column {codes.name!r} must hold 1.0, 0.0, -1.0 or blank, got {codes[bad].iloc[0]!r}"
        )
    uncertain = (values == -1.0).to_numpy()
    labels = (values == 1.0).to_numpy() | (uncertain & (policy == "u_ones"))
    keep = ~uncertain if policy == "ignore" else np.ones(len(values), dtype=bool)
    return labels.astype(int), keep


def label_codes(codes: pd.Series) -> np.ndarray:
    """The original codes as strings: ``1``, ``0``, ``-1`` or ``blank``."""
    values = pd.to_numeric(codes, errors="coerce")
    return np.select([values == 1.0, values == 0.0, values == -1.0], ["1", "0", "-1"], "blank")


def find_csv_folder(root: Path, name: str, what: str) -> Path:
    """The folder holding ``name``: ``root`` itself or a single sub-folder of it."""
    if not root.exists():
        raise InputError(f"{what} root not found: {root}")
    if root.is_file():
        root = root.parent
    if (root / name).is_file():
        return root
    below = sorted(p.parent for p in root.glob(f"*/{name}"))
    if len(below) == 1:
        return below[0]
    found = f"; found it in several sub-folders: {', '.join(map(str, below))}" if below else ""
    raise InputError(f"{root}: {name} not found (expected the official {what} file there){found}")


def _relative_paths(raw: pd.Series, prefix: str) -> pd.Series:
    # Drop the published folder name ("CheXpert-v1.0-small/"), whatever the user renamed it to. It
    # is the same on every row of an official file, so one prefix check and a slice do (fast on 223k
    # rows); mixed prefixes fall back to a regular expression.
    raw = raw.astype(str)
    first = raw.iloc[0]
    head = first.split("/", 1)[0] + "/" if "/" in first and first.split("/", 1)[0] not in _IMAGE_TOP else ""
    rest = raw.str[len(head) :] if raw.str.startswith(head).all() else raw
    if not rest.str.startswith(_TOP_TUPLE).all():
        top = "|".join(_IMAGE_TOP)
        rest = raw.str.replace(rf"^(?:[^/]+/)?(?=(?:{top})/)", "", regex=True)
    return (prefix + "/" + rest) if prefix else rest


def _clean(values: pd.Series, default: str) -> pd.Series:
    """Stripped, lower-case strings (blank → ``default``), computed once per distinct value."""
    mapping = {v: str(v).strip().lower() or default for v in values.dropna().unique()}
    return values.map(mapping).fillna(default)


def load_chexpert(
    root: str | Path,
    *,
    finding: str = "Pleural Effusion",
    uncertainty: str = "u_ones",
    frontal_only: bool = False,
    split: str = "official",
    split_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    demographics: str | Path | None = None,
) -> pd.DataFrame:
    """Read CheXpert's ``train.csv`` and ``valid.csv`` under ``root`` into a manifest.

    Parameters
    ----------
    root : the CheXpert folder (holding ``train.csv``, ``valid.csv``, ``train/``, ``valid/``), or
        the folder above it. Image paths in the manifest are relative to ``root``.
    finding : the target finding, one of :data:`FINDINGS`.
    uncertainty : ``u_ones``, ``u_zeros`` or ``ignore`` (see the module docstring).
    frontal_only : keep frontal views only.
    split : ``official`` (train.csv → train, valid.csv → val) or ``patient`` (a seeded
        patient-level split of all rows, stratified by label × sex, by ``split_fractions``; default
        70 % train, 10 % val, 5 % external, 15 % test).
    split_fractions, seed : the patient-level split.
    demographics : the separately released ``CHEXPERT DEMO.xlsx`` (or the same table saved as CSV),
        joined on the patient id to add ``race``, ``ethnicity`` and ``primary_race`` (see
        :func:`read_demographics`); default: used when a file of that name (``.xlsx`` or ``.csv``) lies
        beside ``train.csv`` or in ``root``.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> head = ",".join(CSV_COLUMNS)
    >>> row = "CheXpert-v1.0-small/{}/patient0000{}/study1/view1_frontal.jpg,Female,68,Frontal,AP"
    >>> row += ",{}" * 14
    >>> effusion = [*[""] * 10, -1.0, *[""] * 3]
    >>> _ = (root / "train.csv").write_text(head + "\\n" + row.format("train", 1, *effusion))
    >>> _ = (root / "valid.csv").write_text(head + "\\n" + row.format("valid", 2, *[0.0] * 14))
    >>> df = load_chexpert(root)
    >>> df["path"][0]
    'train/patient00001/study1/view1_frontal.jpg'
    >>> df[["label", "label_code", "split", "patient_id"]].values.tolist()
    [[1, '-1', 'train', 'patient00001'], [0, '0', 'val', 'patient00002']]
    """
    if finding not in FINDINGS:
        raise InputError(f"CheXpert finding must be one of {list(FINDINGS)}, got {finding!r}")
    if split not in _SPLIT_MODES:
        raise InputError(f"CheXpert split must be one of {list(_SPLIT_MODES)}, got {split!r}")
    root = Path(root)
    folder = find_csv_folder(root, "train.csv", "CheXpert")
    base = root.parent if root.is_file() else root
    prefix = "" if folder == base else folder.relative_to(base).as_posix()
    required = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", finding)
    parts = []
    for name, split_name in (("train.csv", "train"), ("valid.csv", "val")):
        path = folder / name
        if name == "valid.csv" and not path.is_file():
            log.warning("%s not found; using train.csv only", path)
            continue
        df = read_csv_checked(path, required, dtype={"Path": str, "Sex": str, "AP/PA": str})
        labels, keep = apply_uncertainty(df[finding], uncertainty, where=str(path))
        part = pd.DataFrame(
            {
                "path": _relative_paths(df["Path"], prefix).to_numpy(),
                "label": labels,
                "split": split_name,
                "label_code": label_codes(df[finding]),
                "sex": _clean(df["Sex"], "unknown").to_numpy(),
                "age": pd.to_numeric(df["Age"], errors="coerce").to_numpy(),
                "frontal": _clean(df["Frontal/Lateral"], "").to_numpy() == "frontal",
                "view": _clean(df["AP/PA"], "").str.upper().to_numpy(),
            }
        )
        parts.append(part[keep])
    out = pd.concat(parts, ignore_index=True)
    out.loc[~out["frontal"] & (out["view"] == ""), "view"] = "lateral"
    out.loc[out["view"] == "", "view"] = "unknown"
    out.loc[~out["sex"].isin(["male", "female"]), "sex"] = "unknown"
    if frontal_only:
        out = out[out["frontal"]].reset_index(drop=True)
    if out.empty:
        raise InputError(f"{folder}: no rows left (finding={finding!r}, uncertainty={uncertainty!r})")
    parts = out["path"].str[len(prefix) + 1 if prefix else 0 :].str.split("/", n=3, expand=True)
    patient_ok = parts[1].str.startswith("patient").fillna(False)
    out["patient_id"] = parts[1].where(patient_ok, out["path"])
    out["study"] = parts[2].where(patient_ok, "")
    out["sample_id"] = out["path"]
    out["age_bin"] = age_bins(out["age"]).to_numpy()
    if split == "patient":
        out["split"] = stratified_split(
            out, dict(split_fractions or DEFAULT_SPLIT), seed=seed, stratify=("label", "sex")
        )
    out = out.drop(columns="frontal")
    attributes = ("sex", "age_bin")
    demo_path = Path(demographics) if demographics is not None else _find_demographics(folder, base)
    if demo_path is not None:
        demo = read_demographics(demo_path)
        out = out.merge(demo, on="patient_id", how="left", validate="many_to_one")
        out["race"] = out["race"].fillna("unknown")
        out["ethnicity"] = out["ethnicity"].fillna("unknown")
        out["primary_race"] = out["primary_race"].fillna("")
        log.info("%s: race known for %.1f %% of rows", demo_path, 100 * (out["race"] != "unknown").mean())
        attributes += ("race",)
    return validate_manifest(out, attributes=attributes, where=str(folder / "train.csv"))


DEMO_COLUMNS: tuple[str, ...] = ("PATIENT", "PRIMARY_RACE", "ETHNICITY")
DEMO_NAMES: tuple[str, ...] = ("CHEXPERT DEMO.xlsx", "CHEXPERT DEMO.csv")


def _find_demographics(folder: Path, base: Path) -> Path | None:
    for where in dict.fromkeys((folder, base)):
        for name in DEMO_NAMES:
            if (where / name).is_file():
                return where / name
    return None


def race_group(primary_race: pd.Series) -> pd.Series:
    """Coarse race groups from CheXpert's free-text ``PRIMARY_RACE``: ``black`` (contains "Black"),
    ``asian`` ("Asian"), ``white`` ("White"), ``other`` (any other stated race) and ``unknown``
    (blank, "Unknown", "Patient Refused", "Race and Ethnicity Unknown"), following the grouping of
    Gichoya et al. (Lancet Digit. Health 2022) and Glocker et al. (eBioMedicine 2023).

    >>> race_group(pd.Series(["White, non-Hispanic", "Black or African American", "Asian - Historical Conv",
    ...                       "Native Hawaiian or Other Pacific Islander", "Patient Refused", None])).tolist()
    ['white', 'black', 'asian', 'other', 'unknown', 'unknown']
    """
    text = primary_race.fillna("").astype(str).str.strip()
    out = pd.Series("other", index=primary_race.index, dtype=object)
    unknown = (text == "") | text.str.contains("unknown|refused|declined", case=False, regex=True)
    out[unknown] = "unknown"
    for word in ("white", "asian", "black"):  # later words win where several appear
        out[~unknown & text.str.contains(word, case=False, regex=False)] = word
    return out


def read_demographics(path: str | Path) -> pd.DataFrame:
    """Read CheXpert's demographics table (``PATIENT, GENDER, AGE_AT_CXR, PRIMARY_RACE, ETHNICITY``):
    one row per patient with ``patient_id``, ``race`` (:func:`race_group`), ``ethnicity``
    (``hispanic``, ``non_hispanic`` or ``unknown``) and the original ``primary_race``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: CheXpert demographics file not found")
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise InputError(
                f"{path}: reading .xlsx needs openpyxl (pip install 'trustmed[data]'); or save it as CSV"
            ) from None
        try:
            df = pd.read_excel(path, dtype=str)
        except Exception as err:  # noqa: BLE001 - any unreadable workbook is a bad input
            raise InputError(f"{path}: unreadable workbook ({type(err).__name__}: {err})") from None
    else:
        df = read_csv_checked(path, DEMO_COLUMNS, dtype=dict.fromkeys(DEMO_COLUMNS, str))
    missing = [c for c in DEMO_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    df = df.dropna(subset=["PATIENT"]).drop_duplicates("PATIENT")
    ethnicity = df["ETHNICITY"].fillna("").astype(str).str.lower()
    hispanic = ethnicity.str.contains("hispanic|latino", regex=True)
    negated = ethnicity.str.contains("non|not ", regex=True)
    return pd.DataFrame(
        {
            "patient_id": df["PATIENT"].astype(str).str.strip().to_numpy(),
            "race": race_group(df["PRIMARY_RACE"]).to_numpy(),
            "ethnicity": np.where(
                hispanic & negated, "non_hispanic", np.where(hispanic, "hispanic", "unknown")
            ),
            "primary_race": df["PRIMARY_RACE"].fillna("").astype(str).to_numpy(),
        }
    )
