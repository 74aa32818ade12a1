"""Alignment losses between captured cross-attention and an anatomy mask (prompt tuning).

The attention is read from :class:`~trustmed.grounding.attention.AttentionRecorder` maps kept in the
autograd graph, over the tokens the grounder reads (their weights), either as a distribution over
positions (:func:`attention_distribution`) or as the grounder's min-max normalised map
(:func:`attention_heat`); :func:`alignment_loss` compares it with the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trustmed.errors import InputError
from trustmed.grounding.attention import AttentionMap

__all__ = ["attention_distribution", "attention_heat", "alignment_loss"]


def attention_distribution(
    maps: list[AttentionMap], weights: torch.Tensor, sharpness: float | None = 2.0
) -> torch.Tensor:
    """Differentiable (B, h, w) distribution over positions of the weighted tokens' attention.

    Each map (B, heads, h, w, T) is averaged over heads and the weighted tokens; maps of different
    resolutions are resized bilinearly to the largest; layers and calls are averaged. With
    ``sharpness=None`` each image's map is divided by its sum. Otherwise it is standardised per
    image and passed through a softmax over positions, ``softmax(sharpness · (a − mean) / std)``:
    like the grounder's min-max normalisation this reads the map's contrast, not its level (the
    cross-attention of a small LDM is close to uniform over tokens, so ``a / Σ a`` is nearly flat and
    a loss on it barely moves).
    """
    if not maps:
        raise InputError("no cross-attention was recorded (check the layers setting)")
    h = max(m.probs.shape[2] for m in maps)
    w = max(m.probs.shape[3] for m in maps)
    norm = weights.sum(-1).clamp_min(1e-12)[:, None, None]
    out = 0.0
    for m in maps:
        a = (m.probs.mean(1) * weights[:, None, None, :].to(m.probs.dtype)).sum(-1) / norm
        if a.shape[-2:] != (h, w):
            a = F.interpolate(a[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        out = out + a
    out = out / len(maps)
    if sharpness is None:
        return out / out.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    flat = out.flatten(1)
    z = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-8)
    return torch.softmax(sharpness * z, dim=1).view_as(out)


def attention_heat(maps: list[AttentionMap], weights: torch.Tensor) -> torch.Tensor:
    """Differentiable (B, h, w) map in [0, 1] read as the grounder reads it.

    Each map is averaged over heads and the weighted tokens and min-max normalised per image
    (:func:`trustmed.grounding.heatmaps.aggregate_maps`); maps of several layers or calls are
    resized to the largest and averaged.
    """
    from trustmed.grounding.heatmaps import aggregate_maps

    if not maps:
        raise InputError("no cross-attention was recorded (check the layers setting)")
    size = max(m.probs.shape[2] for m in maps)
    return aggregate_maps(maps, weights, size)


def alignment_loss(p: torch.Tensor, mask: torch.Tensor, kind: str = "outside_mass") -> torch.Tensor:
    """Per-image alignment loss between a position distribution ``p`` and a [0, 1] anatomy mask.

    ``mask`` may be larger than ``p``; it is area-pooled to ``p``'s grid (fraction of each cell
    inside the region).

    >>> p = torch.full((1, 2, 2), 0.25)
    >>> m = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    >>> float(alignment_loss(p, m)), round(float(alignment_loss(p, m, "kl")), 4)
    (0.5, 0.6931)
    """
    if mask.shape[-2:] != p.shape[-2:]:
        mask = F.adaptive_avg_pool2d(mask[:, None].float(), p.shape[-2:])[:, 0]
    if kind == "outside_mass":
        return 1.0 - (p * mask).sum((-2, -1))
    if kind == "kl":
        q = mask / mask.sum((-2, -1), keepdim=True).clamp_min(1e-12)
        return (torch.xlogy(q, q) - q * torch.log(p.clamp_min(1e-12))).sum((-2, -1))
    if kind == "soft_iou":
        inter = (p * mask).sum((-2, -1))
        return 1.0 - inter / (p + mask - p * mask).sum((-2, -1)).clamp_min(1e-12)
    raise InputError(f"align_loss {kind!r}: expected outside_mass, kl or soft_iou")
