"""Anatomy vocabulary: report location words → anatomy masks (weak supervision for prompt tuning).

Anatomy-grounded prompt tuning (Vilouras et al., MIDL 2026; arXiv 2506.10633; our design, see
``docs/grounding.md``) supervises the cross-attention of a sentence with *where the sentence says
the finding is*, not with a pathology box. This module turns a report sentence into that region:

1. :func:`parse_locations` finds the location words — sides (``right``, ``left``, ``bilateral``,
   ``both``), zones (``upper``/``middle``/``lower`` zone or lobe, ``mid``), landmarks (``apex`` /
   ``apical``, ``base`` / ``basal`` / ``basilar``, ``costophrenic angle``, ``hilum`` / ``hilar`` /
   ``perihilar``, ``retrocardiac``) and the heart (``heart``, ``cardiac silhouette``,
   ``cardiomegaly``) — and names the regions they denote (``right_upper``, ``left_lung``,
   ``heart`` …). Anatomical words it cannot map (``lingula``, ``mediastinum`` …) are returned as
   ``unknown``: such a sentence is kept for the denoising loss only and counted.
2. :func:`region_mask` resolves a region against the anatomy masks of one image. Landmarks fall back
   to the zone that contains them when the image has no mask of their own (apex → upper zone,
   hilum → middle zone, costophrenic angle and base → lower zone, retrocardiac → left lower zone, a
   whole lung → the union of its zones).
3. Anatomy masks come from SynthCXR (``anatomy/<id>.npz``: the six lung zones and ``heart``), from a
   lung segmentation split into zones (:func:`zones_from_lung_mask`), or from anatomy boxes such as
   Chest ImaGenome's (:func:`anatomy_from_boxes`).

Sides are the patient's: the patient's right lung is on the image's left in a PA radiograph.

>>> parse_locations("small nodule in the right upper zone").regions
('right_upper',)
>>> parse_locations("bilateral pleural effusions").regions
('left_lung', 'right_lung')
>>> parse_locations("opacity in the lingula").unknown
('lingula',)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trustmed.errors import InputError

__all__ = [
    "LocationParse",
    "parse_locations",
    "region_mask",
    "location_mask",
    "zones_from_lung_mask",
    "anatomy_from_boxes",
    "load_anatomy",
    "IMAGENOME_REGIONS",
    "SIDES",
    "ZONE_WORDS",
    "LANDMARK_WORDS",
    "HEART_WORDS",
    "UNMAPPED_WORDS",
]

SIDES = ("right", "left")
#: words naming a vertical zone
ZONE_WORDS = {"upper": "upper", "middle": "middle", "mid": "middle", "lower": "lower"}
#: landmark words → landmark region (resolved per side)
LANDMARK_WORDS = {
    "apex": "apex",
    "apices": "apex",
    "apical": "apex",
    "base": "base",
    "bases": "base",
    "basal": "base",
    "basilar": "base",
    "costophrenic": "costophrenic",
    "hilum": "hilum",
    "hila": "hilum",
    "hilar": "hilum",
    "perihilar": "hilum",
}
#: words naming the heart region
HEART_WORDS = ("heart", "cardiac", "cardiomegaly")
#: anatomical words recognised as locations that this vocabulary cannot map to a mask
UNMAPPED_WORDS = (
    "lingula",
    "lingular",
    "mediastinum",
    "mediastinal",
    "paratracheal",
    "trachea",
    "tracheal",
    "aortic",
    "aorta",
    "diaphragm",
    "hemidiaphragm",
    "subdiaphragmatic",
    "clavicle",
    "clavicular",
    "axilla",
    "axillary",
    "rib",
    "ribs",
    "spine",
    "subpleural",
    "fissure",
)
#: fallbacks of finer regions, tried in order when an image has no mask of the region itself
_FALLBACK = {"apex": "upper", "hilum": "middle", "costophrenic": "lower", "base": "lower"}
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class LocationParse:
    """Regions named by a sentence's location words, and anatomical words that could not be mapped."""

    regions: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    words: tuple[str, ...] = field(default=(), compare=False)

    @property
    def has_location(self) -> bool:
        """True when the sentence supervises the attention (known regions, nothing unmapped)."""
        return bool(self.regions) and not self.unknown


def parse_locations(sentence: str) -> LocationParse:
    """Regions named by the location words of one report sentence.

    Sides combine with zones and landmarks (``right upper zone`` → ``right_upper``; ``left base`` →
    ``left_base``); a side alone names the whole lung (``right effusion`` → ``right_lung``); a zone
    without a side names it on both sides; ``bilateral``/``both`` stand for both sides. Heart words
    give ``heart``; ``retrocardiac`` gives ``retrocardiac``.

    >>> parse_locations("Left basilar atelectasis").regions
    ('left_base',)
    >>> parse_locations("the heart is enlarged").regions
    ('heart',)
    >>> parse_locations("patchy opacities in both upper zones").regions
    ('left_upper', 'right_upper')
    >>> parse_locations("no acute cardiopulmonary process").regions
    ()
    """
    words = tuple(_WORD.findall(sentence.lower()))
    sides = [w for w in words if w in SIDES]
    if any(w in ("bilateral", "bilaterally", "both") for w in words):
        sides = list(SIDES)
    places = [ZONE_WORDS[w] for w in words if w in ZONE_WORDS]
    places += [LANDMARK_WORDS[w] for w in words if w in LANDMARK_WORDS]
    regions: set[str] = set()
    if places:
        for side in sides or SIDES:
            regions.update(f"{side}_{p}" for p in places)
    elif sides:
        regions.update(f"{side}_lung" for side in sides)
    if any(w in HEART_WORDS for w in words):
        regions.add("heart")
    if "retrocardiac" in words:
        regions.add("retrocardiac")
    unknown = tuple(sorted({w for w in words if w in UNMAPPED_WORDS}))
    return LocationParse(tuple(sorted(regions)), unknown, words)


def region_mask(region: str, anatomy: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean mask of one region, from an image's anatomy masks, with the documented fallbacks.

    >>> zone = np.zeros((4, 4), bool)
    >>> anat = {f"{s}_{z}": zone.copy() for s in SIDES for z in ("upper", "middle", "lower")}
    >>> anat["right_upper"][0, 0] = True
    >>> int(region_mask("right_apex", anat).sum()), int(region_mask("right_lung", anat).sum())
    (1, 1)
    """
    if region in anatomy:
        return np.asarray(anatomy[region], dtype=bool)
    side, _, place = region.partition("_")
    if region == "retrocardiac":
        return region_mask("left_lower", anatomy)
    if place == "lung":
        zones = [f"{side}_{z}" for z in ("upper", "middle", "lower")]
        if all(z in anatomy for z in zones):
            return np.logical_or.reduce([np.asarray(anatomy[z], bool) for z in zones])
    if place in _FALLBACK:
        return region_mask(f"{side}_{_FALLBACK[place]}", anatomy)
    raise InputError(f"anatomy region {region!r}: no mask for it (available: {', '.join(sorted(anatomy))})")


def location_mask(
    sentence: str, anatomy: Mapping[str, np.ndarray]
) -> tuple[np.ndarray | None, LocationParse]:
    """Union of the masks of the regions a sentence names, or ``None`` when it names none (or an
    unmapped one); with the parse.

    >>> anat = {f"{s}_{z}": np.eye(3, dtype=bool) for s in SIDES for z in ("upper", "middle", "lower")}
    >>> mask, parse = location_mask("right effusion", anat)
    >>> int(mask.sum()), parse.regions
    (3, ('right_lung',))
    """
    parse = parse_locations(sentence)
    if not parse.has_location:
        return None, parse
    try:
        masks = [region_mask(r, anatomy) for r in parse.regions]
    except InputError:
        return None, LocationParse(parse.regions, parse.regions, parse.words)
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise InputError(f"anatomy masks of different sizes {sorted(shapes)} for {sentence!r}")
    return np.logical_or.reduce(masks), parse


def zones_from_lung_mask(
    lung_mask: np.ndarray, heart_mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Six lung zones from a binary lung segmentation (for real radiographs without zone masks).

    The two largest connected components are the lungs; the one on the image's left is the
    patient's right lung. Each lung is split into upper, middle and lower thirds of its own height
    (the usual radiological zones). ``heart_mask``, if given, is passed through as ``heart``.

    >>> lung = np.zeros((30, 30), bool); lung[3:27, 2:12] = True; lung[3:27, 18:28] = True
    >>> z = zones_from_lung_mask(lung)
    >>> int(z["right_upper"][:, :15].sum()), int(z["left_upper"][:, 15:].sum())
    (80, 80)
    """
    from scipy import ndimage

    lung = np.asarray(lung_mask, dtype=bool)
    if lung.ndim != 2:
        raise InputError(f"lung mask of shape {lung.shape}: expected a 2-D binary mask")
    labels, n = ndimage.label(lung)
    if n < 2:
        raise InputError(f"lung mask: {n} connected component(s) found; expected two lungs")
    sizes = ndimage.sum(lung, labels, index=range(1, n + 1))
    two = np.argsort(sizes)[::-1][:2] + 1
    centres = [np.nonzero(labels == k)[1].mean() for k in two]
    order = [k for _, k in sorted(zip(centres, two, strict=True))]
    out: dict[str, np.ndarray] = {}
    for side, k in zip(("right", "left"), order, strict=True):
        one = labels == k
        rows = np.nonzero(one.any(axis=1))[0]
        edges = np.linspace(rows.min(), rows.max() + 1, 4)
        yy = np.arange(lung.shape[0])[:, None]
        for i, zone in enumerate(("upper", "middle", "lower")):
            out[f"{side}_{zone}"] = one & (yy >= edges[i]) & (yy < edges[i + 1])
    if heart_mask is not None:
        heart = np.asarray(heart_mask, dtype=bool)
        if heart.shape != lung.shape:
            raise InputError(f"heart mask of shape {heart.shape} differs from the lung mask's {lung.shape}")
        out["heart"] = heart
    return out


#: Chest ImaGenome bounding-box names → this vocabulary's regions
IMAGENOME_REGIONS = {
    **{f"{s} upper lung zone": f"{s}_upper" for s in SIDES},
    **{f"{s} mid lung zone": f"{s}_middle" for s in SIDES},
    **{f"{s} lower lung zone": f"{s}_lower" for s in SIDES},
    **{f"{s} apical zone": f"{s}_apex" for s in SIDES},
    **{f"{s} hilar structures": f"{s}_hilum" for s in SIDES},
    **{f"{s} costophrenic angle": f"{s}_costophrenic" for s in SIDES},
    **{f"{s} lung": f"{s}_lung" for s in SIDES},
    "cardiac silhouette": "heart",
}


def anatomy_from_boxes(
    boxes: Mapping[str, tuple[float, float, float, float]], height: int, width: int
) -> dict[str, np.ndarray]:
    """Anatomy masks from named boxes ``(x, y, w, h)`` in pixels, e.g. Chest ImaGenome's.

    Names are mapped with :data:`IMAGENOME_REGIONS` (region names of this vocabulary are accepted
    as they are); other names are ignored.

    >>> m = anatomy_from_boxes({"right upper lung zone": (0, 0, 2, 3)}, 4, 4)
    >>> list(m), int(m["right_upper"].sum())
    (['right_upper'], 6)
    """
    from trustmed.data.mscxr import boxes_to_mask

    known = set(IMAGENOME_REGIONS.values()) | {"retrocardiac"}
    out: dict[str, np.ndarray] = {}
    for name, box in boxes.items():
        key = name.strip().lower()
        region = IMAGENOME_REGIONS.get(key, key if key in known else None)
        if region is not None:
            out[region] = boxes_to_mask([box], height, width)
    if not out:
        raise InputError(f"anatomy boxes: none of {sorted(boxes)} names a known region")
    return out


def load_anatomy(path: str | Path, shape: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Read an ``anatomy/<id>.npz`` file of boolean masks; check their size against ``shape`` (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"anatomy masks {path}: not found")
    with np.load(path) as data:
        masks = {k: data[k].astype(bool) for k in data.files}
    for name, mask in masks.items():
        if mask.ndim != 2 or (shape is not None and mask.shape != tuple(shape)):
            raise InputError(
                f"anatomy mask {name!r} in {path}: shape {mask.shape}, "
                f"expected the image's {tuple(shape or ())}"
            )
    return masks
