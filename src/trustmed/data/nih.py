"""NIH ChestX-ray14: the image labels (``Data_Entry_2017.csv``) as a classification manifest, and the
bounding boxes (``BBox_List_2017.csv``) as phrase-grounding pairs.

ChestX-ray8/14 (Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases", CVPR 2017) ships
112,120 frontal images of 30,805 patients. ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``)
has ``Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender, View
Position`` (then image size and pixel spacing); ``Finding Labels`` is ``|``-separated, with ``No
Finding`` for normal images; ``Patient Gender`` is ``M``/``F``. The official split lists
``train_val_list.txt`` / ``test_list.txt`` are used when present (train_val re-split into train/val
by patient), otherwise a seeded patient-level split.

The BBox file ships about 1,000 boxes for eight findings. Its header is ``Image Index,Finding
Label,Bbox [x,y,w,h],,,`` — the box spans four columns and trailing empty columns follow — so
columns are read by position. Images are the 1024² PNGs under ``images/`` (or
``images_*/images/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.chexpert import read_csv_checked
from trustmed.data.manifest import age_bins, stratified_split, validate_manifest
from trustmed.data.mscxr import GROUNDING_COLUMNS
from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = ["FINDINGS", "load_nih", "load_nih_bbox"]

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
_DEFAULT_SPLIT = {"train": 0.70, "val": 0.10, "external": 0.05, "test": 0.15}


def _image_path(root: Path, name: str) -> Path:
    direct = root / "images" / name
    if direct.is_file():
        return direct
    for folder in sorted(root.glob("images_*/images")):
        if (folder / name).is_file():
            return folder / name
    return direct


def _entry_csv(root: Path) -> Path:
    for name in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"):
        if (root / name).is_file():
            return root / name
    raise InputError(f"NIH ChestX-ray14: neither Data_Entry_2017.csv nor Data_Entry_2017_v2020.csv in {root}")


def _official_split(root: Path, df: pd.DataFrame, seed: int) -> pd.Series | None:
    lists = root / "train_val_list.txt", root / "test_list.txt"
    if not all(p.is_file() for p in lists):
        return None
    test = set(lists[1].read_text().split())
    split = pd.Series(np.where(df["sample_id"].isin(test), "test", "train"), index=df.index)
    train_val = df[split == "train"]
    inner = stratified_split(train_val, {"train": 0.875, "val": 0.125}, seed=seed, stratify=("label",))
    split.loc[train_val.index] = inner.to_numpy()
    return split


def load_nih(
    root: str | Path,
    *,
    finding: str = "Effusion",
    view: str | None = None,
    split: str = "official",
    split_fractions: dict[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Read NIH ChestX-ray14's ``Data_Entry_2017(.v2020).csv`` under ``root`` into a manifest.

    Parameters
    ----------
    root : the dataset folder (the CSV, optional split lists, ``images/`` or ``images_*/images/``).
    finding : the target, one of :data:`FINDINGS` (label 1 when it appears in ``Finding Labels``),
        or ``"any"`` (label 1 for every image that is not ``No Finding``).
    view : keep one ``View Position`` (``PA`` or ``AP``) only.
    split : ``official`` (the split lists when present, else as ``patient``) or ``patient`` (a
        seeded patient-level split stratified by label, 70/10/5/15 % train/val/external/test).

    The manifest has ``sex`` (``male``/``female``/``unknown``), ``age``, ``age_bin``, ``view``,
    ``follow_up`` and ``findings`` (the original ``|``-separated string).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position",
    ...         "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA",
    ...         "00000002_000.png,No Finding,0,2,81,F,AP"]
    >>> _ = (root / "Data_Entry_2017.csv").write_text("\\n".join(rows))
    >>> load_nih(root, split="patient")[["label", "sex", "age_bin", "view"]].values.tolist()
    [[1, 'male', '40-59', 'PA'], [0, 'female', '75+', 'AP']]
    """
    if finding != "any" and finding not in FINDINGS:
        raise InputError(f"NIH finding must be 'any' or one of {list(FINDINGS)}, got {finding!r}")
    if split not in ("official", "patient"):
        raise InputError(f"NIH split must be 'official' or 'patient', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"NIH ChestX-ray14 root {root}: not a folder")
    csv_path = _entry_csv(root)
    raw = read_csv_checked(
        csv_path, _ENTRY_COLUMNS, dtype={"Image Index": str, "Finding Labels": str, "Patient ID": str}
    )
    labels = raw["Finding Labels"].fillna("No Finding").str.split("|")
    if finding == "any":
        target = labels.map(lambda found: found != ["No Finding"])
    else:
        target = labels.map(lambda found: finding in found)
    sex = raw["Patient Gender"].astype(str).str.upper().map({"M": "male", "F": "female"}).fillna("unknown")
    out = pd.DataFrame(
        {
            "sample_id": raw["Image Index"],
            "path": [str(_image_path(root, name).relative_to(root)) for name in raw["Image Index"]],
            "label": target.astype(int).to_numpy(),
            "patient_id": raw["Patient ID"].astype(str),
            "sex": sex,
            "age": pd.to_numeric(raw["Patient Age"], errors="coerce"),
            "view": raw["View Position"].astype(str),
            "follow_up": pd.to_numeric(raw.get("Follow-up #"), errors="coerce"),
            "findings": raw["Finding Labels"],
        }
    )
    # a few ages in the 2017 release are in months or implausible (e.g. 412): treated as unknown
    out.loc[(out["age"] < 0) | (out["age"] > 120), "age"] = np.nan
    out["age_bin"] = age_bins(out["age"]).to_numpy()
    if view is not None:
        out = out[out["view"] == view].reset_index(drop=True)
        if out.empty:
            raise InputError(f"{csv_path}: no images with View Position {view!r}")
    official = _official_split(root, out, seed) if split == "official" else None
    if official is None:
        official = stratified_split(
            out, dict(split_fractions or _DEFAULT_SPLIT), seed=seed, stratify=("label",)
        )
    out["split"] = official.to_numpy()
    return validate_manifest(out, attributes=("sex", "age_bin"), where=str(csv_path))


def load_nih_bbox(
    root: str | Path,
    *,
    csv: str | Path | None = None,
    prompt: str = "The patient has {label}",
    image_size: int = 1024,
) -> pd.DataFrame:
    """Read NIH BBox annotations into the grounding table (one pair per image and finding).

    Parameters
    ----------
    root
        Dataset folder.
    csv
        The BBox file (default ``root/BBox_List_2017.csv``).
    prompt
        Phrase template; ``{label}`` is the finding in lower case.
    image_size
        Side of the distributed images (1024).
    """
    root = Path(root)
    csv_path = Path(csv) if csv is not None else root / "BBox_List_2017.csv"
    if not csv_path.is_file():
        raise InputError(f"NIH BBox list {csv_path}: not found")
    raw = read_csv(csv_path, allow_empty=True)
    if raw.shape[1] < 6 or raw.columns[0] != "Image Index" or raw.columns[1] != "Finding Label":
        raise InputError(
            f"{csv_path}: expected columns 'Image Index', 'Finding Label', 'Bbox [x,y,w,h]' (4 columns); "
            f"got {', '.join(map(str, raw.columns[:6]))}"
        )
    df = raw.iloc[:, :6].copy()
    df.columns = ["image", "label", "x", "y", "w", "h"]
    rows = []
    for (image, label), g in df.groupby(["image", "label"], sort=False):
        rows.append(
            {
                "image_id": image,
                "path": str(_image_path(root, image)),
                "text": prompt.format(label=label.lower()),
                "category": label,
                "boxes": [tuple(float(v) for v in b) for b in g[["x", "y", "w", "h"]].to_numpy()],
                "image_width": image_size,
                "image_height": image_size,
                "split": "test",
            }
        )
    out = pd.DataFrame(rows, columns=GROUNDING_COLUMNS[1:])
    out.insert(0, "pair_id", np.arange(len(out)))
    return out
