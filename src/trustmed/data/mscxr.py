"""MS-CXR phrase-grounding pairs over MIMIC-CXR-JPG images.

MS-CXR (Boecking et al., "Making the Most of Text Semantics to Improve Biomedical Vision-Language
Processing", ECCV 2022) distributes ``MS_CXR_Local_Alignment_v1.x.0.csv`` with one row per box:
dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height (and split in
1.1.0). A phrase can have several boxes; :func:`load_mscxr` merges them by (path, label_text) into
one grounding pair.

Every grounding loader (MS-CXR, VinDr-CXR, NIH BBox, SynthCXR) returns the same table, one row per
(image, phrase) pair: ``pair_id, image_id, path, text, category, boxes, image_width, image_height,
split`` where ``boxes`` is a list of ``(x, y, w, h)`` in pixels of the original image.

Grounding reads an image with :func:`read_image`, which is
:func:`trustmed.data.images.read_grayscale`: a 2-D float32 array in [0, 1] normalised exactly as
classification normalises it (DICOM Modality and VOI LUT applied, ``MONOCHROME1`` inverted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.images import read_grayscale as read_image
from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = [
    "GROUNDING_COLUMNS",
    "MSCXR_COLUMNS",
    "load_mscxr",
    "read_image",
    "boxes_to_mask",
    "find_mscxr_csv",
]

MSCXR_COLUMNS = [
    "dicom_id",
    "category_name",
    "label_text",
    "path",
    "x",
    "y",
    "w",
    "h",
    "image_width",
    "image_height",
]
GROUNDING_COLUMNS = [
    "pair_id",
    "image_id",
    "path",
    "text",
    "category",
    "boxes",
    "image_width",
    "image_height",
    "split",
]


def boxes_to_mask(boxes, height: int, width: int) -> np.ndarray:
    """The union of ``(x, y, w, h)`` boxes as a boolean (height, width) mask.

    >>> boxes_to_mask([(1, 0, 2, 1)], 2, 4).astype(int).tolist()
    [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        mask[y0:y1, x0:x1] = True
    return mask


def find_mscxr_csv(root: str | Path) -> Path:
    """The newest ``MS_CXR_Local_Alignment_v*.csv`` under ``root``."""
    root = Path(root)
    found = sorted(root.glob("MS_CXR_Local_Alignment_v*.csv"))
    if not found:
        raise InputError(f"{root}: no MS_CXR_Local_Alignment_v*.csv found")
    return found[-1]


def load_mscxr(
    root: str | Path,
    *,
    csv: str | Path | None = None,
    image_root: str | Path | None = None,
    split: str | None = None,
) -> pd.DataFrame:
    """Read MS-CXR into the grounding table (boxes merged by (path, label_text)).

    Parameters
    ----------
    root
        Folder holding the CSV (and, unless ``image_root`` is given, the MIMIC-CXR-JPG ``files/``).
    csv
        The CSV file; default: the newest ``MS_CXR_Local_Alignment_v*.csv`` in ``root``.
    image_root
        Folder the CSV's ``path`` column is relative to (default ``root``).
    split
        Keep only this split (needs the ``split`` column of v1.1.0).
    """
    root = Path(root)
    csv_path = Path(csv) if csv is not None else find_mscxr_csv(root)
    if not csv_path.is_file():
        raise InputError(f"MS-CXR CSV {csv_path}: not found")
    df = read_csv(csv_path, allow_empty=True)
    missing = [c for c in MSCXR_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"{csv_path}: columns {', '.join(missing)} not found; available: {', '.join(df.columns)}"
        )
    if "split" not in df.columns:
        if split is not None:
            raise InputError(f"{csv_path}: no 'split' column (MS-CXR v1.0.0); cannot select split {split!r}")
        df["split"] = "test"
    if split is not None:
        df = df[df["split"] == split]
        if df.empty:
            raise InputError(f"{csv_path}: split {split!r} has no rows")
    base = Path(image_root) if image_root is not None else root
    rows = []
    for (path, text), group in df.groupby(["path", "label_text"], sort=False):
        first = group.iloc[0]
        rows.append(
            {
                "image_id": first["dicom_id"],
                "path": str(base / path),
                "text": text,
                "category": first["category_name"],
                "boxes": [tuple(float(v) for v in b) for b in group[["x", "y", "w", "h"]].to_numpy()],
                "image_width": int(first["image_width"]),
                "image_height": int(first["image_height"]),
                "split": first["split"],
            }
        )
    out = pd.DataFrame(rows)
    out.insert(0, "pair_id", np.arange(len(out)))
    return out[GROUNDING_COLUMNS]
