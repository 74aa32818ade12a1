"""Phrase-grounding metrics: CNR, τ-averaged mIoU, pixel AUC-ROC, pointing game, laterality.

Definitions follow the MS-CXR grounding literature (Boecking et al., ECCV 2022, for CNR; Vilouras
et al., arXiv 2404.12920, for mIoU averaged over thresholds and pixel AUC-ROC). A heatmap ``H`` covers
the original image; NaN pixels (outside the model's field of view) are ignored everywhere. The
ground truth ``M`` is the union of the phrase's boxes.

Per-pair numbers are summarised per class, as the macro mean (± std) over classes and as the micro
mean over pairs, each with a percentile-bootstrap CI over pairs (:func:`summarize`, resampling with
:mod:`trustmed.metrics.bootstrap`).

>>> import numpy as np
>>> H = np.zeros((8, 8)); H[2:4, 2:4] = 1.0
>>> M = np.zeros((8, 8), bool); M[2:4, 2:4] = True
>>> miou(H, M), auroc(H, M), pointing_game(H, M)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trustmed.metrics.bootstrap import Bootstrap, check_ci, check_n_boot, percentile_ci

__all__ = [
    "THRESHOLDS",
    "cnr",
    "miou",
    "auroc",
    "pointing_game",
    "laterality_correct",
    "laterality_accuracy",
    "laterality_pairs",
    "sentence_side",
    "caption_flip_shift",
    "pair_metrics",
    "summarize",
]

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _valid(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} != mask shape {mask.shape}")
    keep = np.isfinite(heatmap)
    return heatmap[keep], mask[keep]


def _minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalise; a constant map (the uniform baseline) becomes all ones: it predicts everywhere."""
    lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
    return (values - lo) / (hi - lo) if hi > lo else np.ones_like(values)


def cnr(heatmap: np.ndarray, box_masks: Sequence[np.ndarray] | np.ndarray) -> float:
    """Contrast-to-noise ratio, mean over boxes: |μ_in − μ_out| / sqrt(σ²_in + σ²_out).

    ``box_masks`` is one boolean mask or a list of them (one per box).

    >>> H = np.zeros((4, 4)); H[0, :2] = [1.0, 0.8]; M = np.zeros((4, 4), bool); M[0, :2] = True
    >>> round(cnr(H, M), 3)
    9.0
    """
    masks = [box_masks] if isinstance(box_masks, np.ndarray) and box_masks.ndim == 2 else list(box_masks)
    values = []
    for m in masks:
        h, inside = _valid(heatmap, m)
        if inside.all() or not inside.any():
            continue
        denom = np.sqrt(h[inside].var() + h[~inside].var())
        values.append(abs(h[inside].mean() - h[~inside].mean()) / denom if denom > 0 else np.nan)
    return float(np.nanmean(values)) if values and not np.all(np.isnan(values)) else float("nan")


def miou(heatmap: np.ndarray, mask: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> float:
    """Mean over thresholds τ of IoU(H > τ, M), with H min-max normalised over valid pixels."""
    h, m = _valid(heatmap, mask)
    h = _minmax(h)
    ious = []
    for tau in thresholds:
        pred = h > tau
        union = (pred | m).sum()
        ious.append((pred & m).sum() / union if union else 0.0)
    return float(np.mean(ious))


def auroc(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Pixel-level ROC AUC of H against M (NaN when M is all one class), ties counted as ½."""
    from scipy.stats import rankdata

    h, m = _valid(heatmap, mask)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(h)
    return float((ranks[m].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """1.0 if the heatmap's maximum (first one, NaN ignored) lies in M, else 0.0."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if not np.isfinite(heatmap).any():
        return float("nan")
    idx = np.unravel_index(np.nanargmax(heatmap), heatmap.shape)
    return float(bool(np.asarray(mask, dtype=bool)[idx]))


def laterality_correct(heatmap: np.ndarray, described: np.ndarray, other: np.ndarray) -> float:
    """1.0 if H's mass in the described side's box exceeds its mass in the other side's box."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0)
    h = h - h.min()
    return float(h[np.asarray(described, bool)].sum() > h[np.asarray(other, bool)].sum())


def laterality_accuracy(heatmaps, described_masks, other_masks) -> float:
    """Mean of :func:`laterality_correct` over pairs whose image has the finding on both sides."""
    values = [
        laterality_correct(h, d, o) for h, d, o in zip(heatmaps, described_masks, other_masks, strict=True)
    ]
    return float(np.mean(values)) if values else float("nan")


def sentence_side(text: str) -> str | None:
    """``"left"`` or ``"right"`` when the sentence names exactly one side, else ``None``."""
    sides = set(text.lower().split()) & {"left", "right"}
    return sides.pop() if len(sides) == 1 else None


def laterality_pairs(table) -> list[tuple[int, int]]:
    """Ordered pairs (i, j) of rows (positions in ``table``) of the same image and finding type whose
    sentences name opposite sides: the pairs :func:`laterality_accuracy` is computed on.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"image_id": ["a", "a", "b"], "category": ["Nodule"] * 3,
    ...                   "text": ["right nodule", "left nodule", "right nodule"]})
    >>> laterality_pairs(t)
    [(0, 1), (1, 0)]
    """
    t = table.reset_index(drop=True).assign(_side=[sentence_side(x) for x in table["text"]])
    pairs = []
    for _, g in t.groupby(["image_id", "category"]):
        if len(g) == 2 and set(g["_side"]) == {"left", "right"}:
            i, j = g.index.tolist()
            pairs += [(i, j), (j, i)]
    return pairs


def caption_flip_shift(ious: Sequence[float], ious_flipped: Sequence[float]) -> float:
    """Mean IoU with the true caption minus mean IoU with left↔right swapped (≈ 0: words ignored).

    >>> caption_flip_shift([0.5, 0.3], [0.1, 0.1])
    0.3
    """
    return float(round(np.nanmean(ious) - np.nanmean(ious_flipped), 12))


def pair_metrics(heatmap: np.ndarray, box_masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Every per-pair metric of one heatmap against the phrase's boxes (mask = their union)."""
    mask = np.logical_or.reduce([np.asarray(b, bool) for b in box_masks])
    return {
        "cnr": cnr(heatmap, box_masks),
        "miou": miou(heatmap, mask),
        "auroc": auroc(heatmap, mask),
        "pointing_game": pointing_game(heatmap, mask),
    }


def _weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (n,) under each row of ``weights`` (R, n), NaN values skipped."""
    ok = np.isfinite(values)
    w = weights[:, ok]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, w @ values[ok] / total, np.nan)


def summarize(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("cnr", "miou", "auroc", "pointing_game"),
    by: str = "category",
    n_boot: int = 1000,
    ci: tuple[float, float] = (0.025, 0.975),
    seed: int = 0,
) -> dict:
    """Per-class, macro and micro summaries of per-pair metrics with bootstrap CIs over pairs.

    Each bootstrap replicate resamples the pairs with replacement and recomputes every number (class
    means, their macro mean and std, the micro mean) from the same resample.

    Returns
    -------
    dict
        ``{"task": "grounding", "n_boot", "n_pairs", "overall": {metric: {value, ci}} (micro),
        "macro": {metric: {value, ci, std}}, "classes": {name: {"n", metric: {value, ci}}},
        "warnings": [...]}``.

    >>> t = pd.DataFrame({"category": ["a", "a", "b"], "miou": [0.2, 0.4, 0.9]})
    >>> r = summarize(t, metrics=["miou"], n_boot=50)
    >>> round(r["overall"]["miou"]["value"], 3), round(r["macro"]["miou"]["value"], 3)
    (0.5, 0.6)
    """
    missing = [m for m in (*metrics, by) if m not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the per-pair table; available: {list(table.columns)}")
    n_boot, ci = check_n_boot(n_boot), check_ci(ci)
    n = len(table)
    classes = sorted(table[by].astype(str).unique())
    labels = table[by].astype(str).to_numpy()
    values = {metric: table[metric].to_numpy(dtype=np.float64) for metric in metrics}

    def means(weights: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Micro mean (R,) and class means (R, C) of every metric under weight rows (R, n)."""
        return {
            metric: (
                _weighted_means(v, weights),
                np.column_stack([_weighted_means(v[labels == c], weights[:, labels == c]) for c in classes]),
            )
            for metric, v in values.items()
        }

    parts = [means(np.ones((1, n)))]
    if n_boot > 0 and n > 0:
        parts += [means(w) for w in Bootstrap(n, seed=seed).chunks(n_boot)]
    out: dict = {
        "task": "grounding",
        "n_boot": int(n_boot),
        "n_pairs": int(n),
        "overall": {},
        "macro": {},
        "classes": {c: {"n": int((labels == c).sum())} for c in classes},
        "warnings": [],
    }
    for metric in metrics:
        micro = np.concatenate([p[metric][0] for p in parts])
        per_class = np.concatenate([p[metric][1] for p in parts])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            macro = np.nanmean(per_class, axis=1)
            spread = np.nanstd(per_class, axis=1)
        out["overall"][metric] = _entry(micro, n_boot, ci)
        out["macro"][metric] = {**_entry(macro, n_boot, ci), "std": float(spread[0])}
        for j, c in enumerate(classes):
            out["classes"][c][metric] = _entry(per_class[:, j], n_boot, ci)
            if not np.isfinite(per_class[0, j]):
                out["warnings"].append(f"class {c!r}: {metric} undefined (no valid pair)")
    return out


def _entry(samples: np.ndarray, n_boot: int, ci: tuple[float, float]) -> dict:
    entry: dict = {"value": float(samples[0])}
    if n_boot > 0:
        entry["ci"] = percentile_ci(samples[1:], ci)
    return entry
