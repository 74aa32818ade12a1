"""NIH ChestX-ray14 bounding boxes (``BBox_List_2017.csv``) as phrase-grounding pairs.

ChestX-ray8/14 (Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases", CVPR 2017) ships about
1,000 boxes for eight findings. The BBox file's header is ``Image Index,Finding Label,Bbox
[x,y,w,h],,,`` — the box spans four columns and trailing empty columns follow — so columns are read
by position. Images are the 1024² PNGs under ``images/`` (or ``images_*/images/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.data.mscxr import GROUNDING_COLUMNS
from trustmed.errors import InputError

__all__ = ["load_nih_bbox"]


def _image_path(root: Path, name: str) -> Path:
    direct = root / "images" / name
    if direct.is_file():
        return direct
    for folder in sorted(root.glob("images_*/images")):
        if (folder / name).is_file():
            return folder / name
    return direct


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
    raw = pd.read_csv(csv_path)
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
