"""From recorded cross-attention to a phrase heatmap over the original image.

The steps of zero-shot LDM grounding (Vilouras et al., arXiv 2404.12920) after capture: each (layer,
step) map is averaged over heads and the selected tokens, min-max normalised, bilinearly resized to
the crop size; maps are averaged over layers and steps; a Gaussian filter (σ = 2.5 px at 512²),
min-max, Otsu's threshold (Otsu, "A Threshold Selection Method from Gray-Level Histograms", 1979)
keeping ``H · (H > t_otsu)``; finally the centre crop is undone with NaN outside the field of view.

>>> import numpy as np
>>> h = np.zeros((4, 4)); h[1:3, 1:3] = 1.0
>>> uncrop(h, CropInfo(original=(8, 4), resized=(8, 4), top=2, left=0, size=4)).shape
(8, 4)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionMap

__all__ = [
    "CropInfo",
    "crop_info",
    "aggregate_maps",
    "minmax",
    "smooth",
    "otsu_mask",
    "postprocess",
    "uncrop",
    "resize_and_crop",
    "ground_in_batches",
    "plot_cases",
]


@dataclass(frozen=True)
class CropInfo:
    """Geometry of "resize the shortest side to ``size``, then centre crop ``size × size``"."""

    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int
    size: int


def crop_info(height: int, width: int, size: int) -> CropInfo:
    """The resize-then-centre-crop geometry for an image of ``height × width``.

    >>> crop_info(100, 200, 50)
    CropInfo(original=(100, 200), resized=(50, 100), top=0, left=25, size=50)
    """
    scale = size / min(height, width)
    rh, rw = max(size, round(height * scale)), max(size, round(width * scale))
    return CropInfo((height, width), (rh, rw), (rh - size) // 2, (rw - size) // 2, size)


def resize_and_crop(
    image: np.ndarray, size: int, channels: tuple[int, ...] = (1,)
) -> tuple[torch.Tensor, CropInfo]:
    """(H, W) or (C, H, W) in [0, 1] → shortest side resized to ``size``, centre crop, (C, size, size).

    ``channels``: the channel counts accepted; anything else, or NaN, is an :class:`InputError`.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in channels or min(arr.shape[1:]) < 1:
        allowed = " or ".join(str(c) for c in sorted(set(channels)))
        raise InputError(
            f"image of shape {tuple(np.shape(image))}: expected (H, W) or (C, H, W) "
            f"with C = {allowed} channels"
        )
    if not np.isfinite(arr).all():
        raise InputError("image contains NaN or infinite values")
    info = crop_info(arr.shape[1], arr.shape[2], size)
    x = F.interpolate(
        torch.from_numpy(arr)[None], size=info.resized, mode="bilinear", antialias=True, align_corners=False
    )[0]
    return x[:, info.top : info.top + size, info.left : info.left + size].clamp(0, 1), info


def ground_in_batches(
    crop_heatmaps,
    images: list,
    phrases: list[str],
    *,
    batch_size: int,
    sigma: float,
    otsu: bool,
    border: str = "nearest",
) -> tuple[list[np.ndarray], dict]:
    """Run ``crop_heatmaps(images, phrases) -> (maps, crop infos)`` batch by batch, then post-process
    (Gaussian filter with ``border`` mode, Otsu) and undo each crop; return the heatmaps and the
    timing."""
    if len(images) != len(phrases):
        raise InputError(f"{len(images)} images but {len(phrases)} phrases; expected one phrase per image")
    t0 = time.perf_counter()
    out: list[np.ndarray] = []
    bs = max(1, int(batch_size))
    for start in range(0, len(images), bs):
        heat, infos = crop_heatmaps(list(images[start : start + bs]), list(phrases[start : start + bs]))
        for h, info in zip(heat.float().cpu().numpy(), infos, strict=True):
            out.append(uncrop(postprocess(h, sigma=sigma, otsu=otsu, border=border), info))
    total = time.perf_counter() - t0
    return out, {"total": total, "pairs": len(images), "seconds_per_pair": total / max(len(images), 1)}


def minmax(x: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Min-max normalise over ``dims`` (constant maps become 0)."""
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def aggregate_maps(
    maps: list[AttentionMap],
    token_weights: torch.Tensor,
    size: int,
    *,
    steps: set[int] | None = None,
) -> torch.Tensor:
    """Average selected (layer, step) maps into one (B, size, size) map per pair, differentiably.

    Parameters
    ----------
    maps
        Recorded maps, each (B, heads, h, w, T).
    token_weights
        (B, T) weights of the tokens to keep (1 for a selected token, 0 otherwise).
    size
        Side of the crop the maps are resized to.
    steps
        Keep only maps whose ``step`` is in this set (``None``: all).
    """
    chosen = [m for m in maps if steps is None or m.step in steps]
    if not chosen:
        raise ValueError("no attention maps to aggregate (check the layer and timestep selection)")
    w = token_weights / token_weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    total = None
    for m in chosen:
        per_token = m.probs.float().mean(dim=1)  # (B, h, w, T)
        w = w.to(per_token.device)
        heat = torch.einsum("bhwt,bt->bhw", per_token, w.to(per_token.dtype))
        heat = F.interpolate(minmax(heat)[:, None], size=(size, size), mode="bilinear", align_corners=False)[
            :, 0
        ]
        total = heat if total is None else total + heat
    return total / len(chosen)


def smooth(heat: np.ndarray, sigma: float, border: str = "nearest") -> np.ndarray:
    """Gaussian filter of each (…, H, W) map with ``sigma`` pixels (no-op for sigma ≤ 0); ``border`` is
    scipy's mode at the edges (``nearest`` repeats the edge pixel, ``reflect`` mirrors, as the
    zero-shot paper's code does)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return heat
    sig = [0.0] * (heat.ndim - 2) + [sigma, sigma]
    return gaussian_filter(heat, sigma=sig, mode=border)


def otsu_mask(heat: np.ndarray) -> np.ndarray:
    """``heat > otsu(heat)`` (all True for a constant map)."""
    from skimage.filters import threshold_otsu

    if np.ptp(heat) == 0:
        return np.ones_like(heat, dtype=bool)
    return heat > threshold_otsu(heat)


def _minmax_np(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def postprocess(heat: np.ndarray, *, sigma: float, otsu: bool = True, border: str = "nearest") -> np.ndarray:
    """Gaussian filter, min-max, then (optionally) keep ``H · (H > otsu)`` for one (H, W) map."""
    heat = _minmax_np(smooth(np.asarray(heat, dtype=np.float64), sigma, border))
    return heat * otsu_mask(heat) if otsu else heat


def uncrop(heat: np.ndarray, info: CropInfo) -> np.ndarray:
    """Map a (size, size) heatmap back onto the original image, NaN outside the crop."""
    h0, w0 = info.original
    sy, sx = h0 / info.resized[0], w0 / info.resized[1]
    y0, y1 = round(info.top * sy), round((info.top + info.size) * sy)
    x0, x1 = round(info.left * sx), round((info.left + info.size) * sx)
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    patch = F.interpolate(
        torch.as_tensor(heat, dtype=torch.float32)[None, None],
        size=(y1 - y0, x1 - x0),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    out = np.full((h0, w0), np.nan, dtype=np.float32)
    out[y0:y1, x0:x1] = patch
    return out


def plot_cases(cases: list[dict], path, *, columns: int = 4) -> None:
    """Save a grid of overlays; each case has ``image``, ``heatmap``, optional ``boxes`` and ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trustmed.report.figures import save_png

    rows = max(1, -(-len(cases) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), cases, strict=False):
        ax.imshow(case["image"], cmap="gray")
        ax.imshow(np.ma.masked_invalid(case["heatmap"]), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for x, y, w, h in case.get("boxes", []):
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.2))
        ax.set_title(case.get("title", ""), fontsize=7)
    save_png(fig, path, dpi=90)
