"""What the grounding benchmarks share: reference maps, the earlier prompt recipe, table helpers.

>>> import pandas as pd
>>> lateral_rows(pd.DataFrame({"text": ["left effusion", "cardiomegaly", "left and right nodules"]}), 5)
[0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trustmed.data.mscxr import boxes_to_mask

__all__ = [
    "INPUT_RECIPE",
    "box_masks",
    "with_truth",
    "prior_maps",
    "lateral_rows",
    "ci_cell",
    "other_image_texts",
]

#: the earlier prompt-tuning default, kept as a benchmark row: input and deep context vectors without
#: output offsets, the ``kl`` loss, 12 epochs (better laterality, much lower mIoU than the default)
INPUT_RECIPE = {"output_ctx": False, "align_loss": "kl", "epochs": 12}


def box_masks(table: pd.DataFrame, size: int) -> list[np.ndarray]:
    """Each pair's box mask at ``size × size``."""
    return [boxes_to_mask(b, size, size) for b in table.boxes]


def with_truth(table: pd.DataFrame, root) -> pd.DataFrame:
    """A SynthCXR grounding table joined with the generator's ``findings.csv`` (side, zone, …)."""
    truth = pd.read_csv(root / "findings.csv").drop_duplicates(["dicom_id", "label_text"])
    return table.merge(truth, left_on=["image_id", "text"], right_on=["dicom_id", "label_text"], how="left")


def prior_maps(train: pd.DataFrame, test: pd.DataFrame, size: int, keys: list[str]) -> list[np.ndarray]:
    """Mean ground-truth mask over training pairs sharing ``keys`` (falls back to the category).

    ``["category"]`` is the class-location prior; ``["category", "side", "zone"]`` the text oracle,
    a ceiling for a map that reads the sentence perfectly but not the image.
    """
    train_masks = np.stack(box_masks(train, size)).astype(np.float64)
    means = {k: train_masks[idx].mean(0) for k, idx in train.groupby(keys, dropna=False).indices.items()}
    by_cat = {k: train_masks[idx].mean(0) for k, idx in train.groupby("category").indices.items()}
    out = []
    for row in test.itertuples():
        key = tuple(getattr(row, k) for k in keys) if len(keys) > 1 else getattr(row, keys[0])
        key = (
            tuple(None if isinstance(v, float) and np.isnan(v) else v for v in key) if len(keys) > 1 else key
        )
        out.append(means.get(key, by_cat[row.category]))
    return out


def lateral_rows(table: pd.DataFrame, limit: int) -> list[int]:
    """Positions of the first ``limit`` pairs whose sentence names exactly one side (the flip test)."""
    return [
        i for i, text in enumerate(table.text) if len(set(text.lower().split()) & {"left", "right"}) == 1
    ][:limit]


def ci_cell(entry: dict, metric: str) -> str:
    """``value [low, high]`` of a summary's overall metric (``value`` alone without a CI)."""
    e = entry["overall"][metric]
    if e["value"] is None or np.isnan(e["value"]):
        return "—"  # undefined, e.g. the CNR of a constant map
    return f"{e['value']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if "ci" in e else f"{e['value']:.3f}"


def other_image_texts(table: pd.DataFrame, seed: int) -> list[str]:
    """Each pair's sentence replaced by the sentence of a pair from another image (the text control:
    how much of a map comes from the sentence rather than from the image alone)."""
    rng = np.random.default_rng(seed)
    images, texts = table.image_id.to_numpy(), table.text.to_numpy()
    return [str(rng.choice(texts[images != image])) for image in images]
