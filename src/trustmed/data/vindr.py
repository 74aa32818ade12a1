"""VinDr-CXR box annotations as phrase-grounding pairs.

VinDr-CXR (Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's
annotations", Scientific Data 2022) distributes ``annotations/annotations_{train,test}.csv``
(image_id, rad_id, class_name, x_min, y_min, x_max, y_max; "No finding" rows have empty boxes,
several radiologists per image) and DICOM images ``{train,test}/<image_id>.dicom`` (MONOCHROME1
images are inverted on reading). As in zero-shot LDM grounding (Vilouras et al., arXiv 2404.12920)
each (image, class) is one pair with the prompt "The patient has {class}" and every box of that
class on the image (all readers) in its ground truth.

A ``sentences.csv`` (image_id, class_name, sentence, side; the SynthCXR out-of-distribution
variant writes one) turns each sentence into a pair instead, with the boxes of its class on its
side (patient's right = image left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.mscxr import GROUNDING_COLUMNS
from trustmed.errors import InputError
from trustmed.io import read_csv

__all__ = ["VINDR_COLUMNS", "VINDR_CLASSES", "load_vindr"]

VINDR_COLUMNS = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
#: The eight most frequent VinDr-CXR local labels (default class selection).
VINDR_CLASSES = (
    "Aortic enlargement",
    "Cardiomegaly",
    "Pleural thickening",
    "Pulmonary fibrosis",
    "Nodule/Mass",
    "Lung Opacity",
    "Pleural effusion",
    "Other lesion",
)


def _dicom_size(path: Path) -> tuple[float, float]:
    if not path.is_file():
        return float("nan"), float("nan")
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return float(ds.Columns), float(ds.Rows)


def load_vindr(
    root: str | Path,
    *,
    split: str = "test",
    classes: tuple[str, ...] | list[str] | None = VINDR_CLASSES,
    prompt: str = "The patient has {class_name}",
    sentences: str | Path | None = None,
) -> pd.DataFrame:
    """Read VinDr-CXR boxes into the grounding table (see :mod:`trustmed.data.mscxr`).

    Parameters
    ----------
    root
        Dataset folder (``annotations/`` and ``<split>/`` inside).
    split
        ``train`` or ``test``.
    classes
        Classes to keep (``None``: every class except "No finding").
    prompt
        Template of the phrase; ``{class_name}`` is replaced by the class in lower case.
    sentences
        Optional CSV of per-finding sentences (see the module docstring); ``"auto"`` uses
        ``root/sentences.csv`` when it exists.
    """
    root = Path(root)
    csv = root / "annotations" / f"annotations_{split}.csv"
    if not csv.is_file():
        raise InputError(f"VinDr-CXR annotations {csv}: not found")
    df = read_csv(csv, allow_empty=True)
    missing = [c for c in VINDR_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{csv}: columns {', '.join(missing)} not found; available: {', '.join(df.columns)}")
    df = df[(df["class_name"] != "No finding") & df["x_min"].notna()]
    if classes is not None:
        unknown = sorted(set(classes) - set(df["class_name"]))
        df = df[df["class_name"].isin(classes)]
        if df.empty:
            raise InputError(f"{csv}: none of the classes {list(classes)} has a box ({unknown} absent)")
    sizes: dict[str, tuple[float, float]] = {}

    def size_of(image_id):
        if image_id not in sizes:
            sizes[image_id] = _dicom_size(root / split / f"{image_id}.dicom")
        return sizes[image_id]

    boxes_of = {
        key: [(r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min) for r in g.itertuples()]
        for key, g in df.groupby(["image_id", "class_name"], sort=False)
    }
    rows = []
    if sentences == "auto":
        sentences = root / "sentences.csv" if (root / "sentences.csv").is_file() else None
    if sentences is not None:
        sent = read_csv(sentences, allow_empty=True)
        for r in sent.itertuples():
            if (r.image_id, r.class_name) not in boxes_of:
                continue
            w, h = size_of(r.image_id)
            boxes = boxes_of[(r.image_id, r.class_name)]
            if isinstance(r.side, str) and np.isfinite(w):
                on_side = [b for b in boxes if (b[0] + b[2] / 2 < w / 2) == (r.side == "right")]
                boxes = on_side or boxes
            rows.append(_row(root, split, r.image_id, r.sentence, r.class_name, boxes, w, h))
    else:
        for (image_id, cls), boxes in boxes_of.items():
            w, h = size_of(image_id)
            text = prompt.format(class_name=cls.lower())
            rows.append(_row(root, split, image_id, text, cls, boxes, w, h))
    out = pd.DataFrame(rows, columns=GROUNDING_COLUMNS[1:])
    out.insert(0, "pair_id", np.arange(len(out)))
    return out


def _row(root, split, image_id, text, cls, boxes, w, h):
    return {
        "image_id": image_id,
        "path": str(root / split / f"{image_id}.dicom"),
        "text": text,
        "category": cls,
        "boxes": [tuple(float(v) for v in b) for b in boxes],
        "image_width": w,
        "image_height": h,
        "split": split,
    }
