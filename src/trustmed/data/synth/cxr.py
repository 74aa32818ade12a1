"""SynthCXR: grayscale chest phantoms with located findings, report sentences, boxes and zone masks.

A phrase-grounding benchmark with known ground truth, written in the MS-CXR format
(``MS_CXR_Local_Alignment_v1.1.0.csv`` over MIMIC-CXR-JPG-like paths) so the MS-CXR loader reads
it, and a VinDr-CXR-format out-of-distribution variant (different contrast, noise, field of view,
DICOM files, MONOCHROME1 for some images). The task is the one of MS-CXR (Boecking et al., "Making
the Most of Text Semantics to Improve Biomedical Vision-Language Processing", ECCV 2022) as used by
zero-shot LDM grounding (Vilouras et al., arXiv 2404.12920).

Each image has lungs split into upper/middle/lower zones per side, a heart, ribs and noise, and one
or two findings (nodule, consolidation, pleural effusion, pneumothorax, cardiomegaly) at a zone,
each with a sentence such as ``"small nodule in the right upper zone"``. About a quarter of the
images carry the same finding type on both sides, one sentence each, so that grounding a sentence
requires reading its location words. Per-zone anatomy masks are saved beside the images
(``anatomy/<dicom_id>.npz``). Patient's right is on the image's left, as in a PA radiograph.

>>> rng = np.random.default_rng(0)
>>> case = generate_case(rng, image_size=64)
>>> case.image.shape, case.image.dtype, len(case.findings) >= 1
((64, 64), dtype('float32'), True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.errors import InputError

__all__ = [
    "FINDINGS",
    "ZONES",
    "VINDR_NAMES",
    "Finding",
    "Case",
    "generate_case",
    "flip_laterality",
    "generate_synthcxr",
    "make_synthcxr",
    "make_synthcxr_vindr",
    "sentence_vocabulary",
]

logger = logging.getLogger(__name__)

FINDINGS = ("Nodule", "Consolidation", "Pleural Effusion", "Pneumothorax", "Cardiomegaly")
ZONES = tuple(f"{side}_{zone}" for side in ("right", "left") for zone in ("upper", "middle", "lower"))
#: VinDr-CXR class names used by the out-of-distribution variant.
VINDR_NAMES = {
    "Nodule": "Nodule/Mass",
    "Consolidation": "Consolidation",
    "Pleural Effusion": "Pleural effusion",
    "Pneumothorax": "Pneumothorax",
    "Cardiomegaly": "Cardiomegaly",
}
_TEMPLATES = {
    "Nodule": ["{size} nodule in the {side} {zone} zone", "{side} {zone} zone {size} nodule"],
    "Consolidation": ["consolidation in the {side} {zone} zone", "{side} {zone} zone consolidation"],
    "Pleural Effusion": ["{size} {side} pleural effusion", "{side} pleural effusion"],
    "Pneumothorax": ["{side} apical pneumothorax", "{size} {side} pneumothorax"],
    "Cardiomegaly": ["cardiomegaly", "the heart is enlarged"],
}
_OOD_TEMPLATES = {
    "Nodule": ["there is a {size} nodule projecting over the {side} {zone} zone"],
    "Consolidation": ["patchy consolidation is seen in the {side} {zone} zone"],
    "Pleural Effusion": ["there is a {size} {side} pleural effusion"],
    "Pneumothorax": ["a {size} {side} apical pneumothorax is present"],
    "Cardiomegaly": ["the cardiac silhouette is enlarged"],
}
_SIZES = ("small", "large")


@dataclass
class Finding:
    """One finding: type, side (``right``/``left``/``None``), zone, sentence and box (x, y, w, h)."""

    category: str
    side: str | None
    zone: str | None
    sentence: str
    box: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)


@dataclass
class Case:
    """One phantom: image in [0, 1], its findings, and anatomy masks keyed by zone name and ``heart``."""

    image: np.ndarray
    findings: list[Finding]
    anatomy: dict[str, np.ndarray]
    sex: str
    age: int


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _zones(lung: np.ndarray, side: str) -> dict[str, np.ndarray]:
    rows = np.nonzero(lung.any(axis=1))[0]
    top, bottom = rows.min(), rows.max() + 1
    cuts = np.linspace(top, bottom, 4).round().astype(int)
    out = {}
    for i, zone in enumerate(("upper", "middle", "lower")):
        band = np.zeros_like(lung)
        band[cuts[i] : cuts[i + 1]] = True
        out[f"{side}_{zone}"] = lung & band
    return out


def _sentence(rng, category, side, zone, ood):
    table = _OOD_TEMPLATES if ood else _TEMPLATES
    template = table[category][rng.integers(len(table[category]))]
    return template.format(size=_SIZES[rng.integers(2)], side=side or "", zone=zone or "")


def _draw_finding(rng, image, yy, xx, s, category, side, zone, anatomy, lungs):
    """Paint one finding in place and return its ground-truth mask."""
    if category == "Nodule":
        region = anatomy[f"{side}_{zone}"]
        ys, xs = np.nonzero(region)
        k = rng.integers(len(ys))
        r = s * rng.uniform(0.035, 0.05)
        mask = _ellipse(yy, xx, ys[k], xs[k], r, r)
        image[mask] += 0.45
    elif category == "Consolidation":
        region = anatomy[f"{side}_{zone}"]
        ys, xs = np.nonzero(region)
        cy, cx = ys.mean(), xs.mean()
        sigma = s * rng.uniform(0.05, 0.07)
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
        mask = (blob > 0.3) & lungs[side]
        image += 0.35 * blob * lungs[side]
    elif category == "Pleural Effusion":
        lung = lungs[side]
        rows = np.nonzero(lung.any(axis=1))[0]
        level = rows.max() - (rows.max() - rows.min()) * rng.uniform(0.2, 0.33)
        meniscus = level - 0.04 * s * np.cos(np.pi * (xx - xx.mean()) / s)
        mask = lung & (yy >= meniscus)
        image[mask] += 0.5
    elif category == "Pneumothorax":
        lung = lungs[side]
        cols = np.nonzero(lung.any(axis=0))[0]
        rows = np.nonzero(lung.any(axis=1))[0]
        lateral = cols.min() if side == "right" else cols.max()
        cy = rows.min() + 0.1 * (rows.max() - rows.min())
        mask = lung & _ellipse(yy, xx, cy, lateral, 0.22 * s, 0.09 * s)
        image[mask] = 0.04
    else:
        mask = anatomy["heart"]
    return mask


def generate_case(
    rng: np.random.Generator,
    *,
    image_size: int = 128,
    bilateral_rate: float = 0.25,
    second_finding_rate: float = 0.2,
    ood: bool = False,
) -> Case:
    """Draw one phantom with its findings.

    Parameters
    ----------
    rng
        Random generator (the only source of randomness).
    image_size
        Side of the square image in pixels.
    bilateral_rate
        Probability that the image carries the same lateral finding on both sides (one sentence each).
    second_finding_rate
        Probability of a second, different finding when the image is not bilateral.
    ood
        Out-of-distribution appearance: gamma-changed contrast, stronger noise, zoomed and shifted
        field of view, different sentence templates.
    """
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    zoom = rng.uniform(0.8, 0.9) if ood else 1.0
    shift = rng.uniform(-0.06, 0.06, size=2) * s if ood else rng.uniform(-0.02, 0.02, size=2) * s
    c = s / 2 + shift
    scale = zoom * rng.uniform(0.95, 1.05)

    def at(fy, fx):
        return c[0] + (fy - 0.5) * s * scale, c[1] + (fx - 0.5) * s * scale

    sex = ("F", "M")[rng.integers(2)]
    age = int(rng.integers(20, 90))
    image = np.full((s, s), 0.05, np.float32)
    body = _ellipse(yy, xx, *at(0.55, 0.5), 0.5 * s * scale, 0.45 * s * scale)
    image[body] = 0.55
    lungs = {}
    for side, fx in (("right", 0.3), ("left", 0.7)):
        cy, cx = at(0.45 + rng.uniform(-0.02, 0.02), fx + rng.uniform(-0.02, 0.02))
        lungs[side] = _ellipse(yy, xx, cy, cx, 0.3 * s * scale, 0.13 * s * scale)
        image[lungs[side]] = 0.2
    lung_any = lungs["right"] | lungs["left"]
    rib_phase = rng.uniform(0, 2 * np.pi)
    ribs = (
        np.sin(2 * np.pi * (yy + 0.15 * np.abs(xx - c[1])) / (0.09 * s * scale) + rib_phase) > 0.75
    ) & lung_any
    image[ribs] += 0.08

    categories = list(FINDINGS)
    category = categories[rng.integers(len(categories))]
    cardiomegaly = category == "Cardiomegaly"
    heart_scale = rng.uniform(1.45, 1.6) if cardiomegaly else rng.uniform(0.9, 1.05)
    heart = _ellipse(yy, xx, *at(0.66, 0.56), 0.1 * s * scale * heart_scale, 0.12 * s * scale * heart_scale)
    image[heart] = 0.7
    for side in lungs:
        lungs[side] = lungs[side] & ~heart
    anatomy = {**_zones(lungs["right"], "right"), **_zones(lungs["left"], "left"), "heart": heart}

    specs: list[tuple[str, str | None, str | None]] = []
    if category == "Cardiomegaly":
        specs.append((category, None, None))
    else:
        side = ("right", "left")[rng.integers(2)]
        zone = _zone_for(rng, category)
        specs.append((category, side, zone))
        if rng.random() < bilateral_rate:
            other = "left" if side == "right" else "right"
            specs.append((category, other, _zone_for(rng, category)))
    if len(specs) == 1 and category != "Cardiomegaly" and rng.random() < second_finding_rate:
        extra = [f for f in FINDINGS if f not in (category, "Cardiomegaly")]
        cat2 = extra[rng.integers(len(extra))]
        other = "left" if specs[0][1] == "right" else "right"
        specs.append((cat2, other, _zone_for(rng, cat2)))

    findings = []
    for cat, side, zone in specs:
        mask = _draw_finding(rng, image, yy, xx, s, cat, side, zone, anatomy, lungs)
        if not mask.any():
            continue
        sentence = _sentence(rng, cat, side, zone, ood).strip()
        findings.append(Finding(cat, side, zone, " ".join(sentence.split()), _box(mask), mask))

    image = image + rng.normal(0, 0.05 if ood else 0.02, size=image.shape).astype(np.float32)
    image = np.clip(image, 0, 1)
    if ood:
        image = image ** rng.uniform(0.6, 0.75)
    return Case(image.astype(np.float32), findings, anatomy, sex, age)


def _zone_for(rng, category):
    if category == "Pleural Effusion":
        return "lower"
    if category == "Pneumothorax":
        return "upper"
    return ("upper", "middle", "lower")[rng.integers(3)]


def flip_laterality(sentence: str) -> str:
    """Swap ``left`` and ``right`` in a sentence (for the caption-flip test).

    >>> flip_laterality("small nodule in the right upper zone; left effusion")
    'small nodule in the left upper zone; right effusion'
    """
    words = sentence.replace(";", " ; ").split()
    swap = {"left": "right", "right": "left"}
    return " ".join(swap.get(w, w) for w in words).replace(" ; ", "; ")


def sentence_vocabulary() -> list[str]:
    """Every word any SynthCXR sentence (both variants) can contain, sorted."""
    words = {"right", "left", "upper", "middle", "lower", *_SIZES, "the", "patient", "has"}
    for table in (_TEMPLATES, _OOD_TEMPLATES):
        for templates in table.values():
            for t in templates:
                words.update(w for w in t.split() if not w.startswith("{"))
    for name in (*FINDINGS, *VINDR_NAMES.values()):
        words.update(name.lower().replace("/", " ").split())
    return sorted(words)


def _split_of(i: int, n: int, fractions: tuple[float, float]) -> str:
    if i < round(fractions[0] * n):
        return "train"
    if i < round((fractions[0] + fractions[1]) * n):
        return "val"
    return "test"


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(path)


def _save_anatomy(path: Path, anatomy: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: v.astype(bool) for k, v in anatomy.items()})


def make_synthcxr(
    out_dir: str | Path,
    *,
    n_images: int = 600,
    image_size: int = 128,
    seed: int = 0,
    split_fractions: tuple[float, float] = (0.6, 0.1),
    bilateral_rate: float = 0.25,
) -> Path:
    """Write SynthCXR in the MS-CXR format and return the CSV path.

    Files: ``MS_CXR_Local_Alignment_v1.1.0.csv`` (one row per box: dicom_id, category_name,
    label_text, path, x, y, w, h, image_width, image_height, split), images under
    ``files/p1x/p<subject>/s<study>/<dicom_id>.png``, ``patients.csv`` (subject_id, gender,
    anchor_age; MIMIC-IV style), ``anatomy/<dicom_id>.npz`` (boolean zone masks and ``heart``) and
    ``findings.csv`` (dicom_id, label_text, side, zone: the generator's truth per sentence).

    >>> import tempfile
    >>> csv = make_synthcxr(tempfile.mkdtemp(), n_images=6, image_size=32, seed=1)
    >>> pd.read_csv(csv).columns.tolist()[:4]
    ['dicom_id', 'category_name', 'label_text', 'path']
    """
    if n_images < 3:
        raise InputError(f"SynthCXR: n_images={n_images}; expected at least 3 (one per split)")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows, truth, patients = [], [], []
    for i in range(n_images):
        case = generate_case(rng, image_size=image_size, bilateral_rate=bilateral_rate)
        subject = 10_000_000 + i
        study = 50_000_000 + i
        dicom_id = f"synth{seed:03d}-{i:06d}"
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.png"
        _save_png(out / rel, case.image)
        _save_anatomy(out / "anatomy" / f"{dicom_id}.npz", case.anatomy)
        split = _split_of(i, n_images, split_fractions)
        patients.append({"subject_id": subject, "gender": case.sex, "anchor_age": case.age})
        for f in case.findings:
            x, y, w, h = f.box
            rows.append(
                {
                    "dicom_id": dicom_id,
                    "category_name": f.category,
                    "label_text": f.sentence,
                    "path": rel,
                    "x": x,
                    "y": y,
                    "w": w,
                    "h": h,
                    "image_width": image_size,
                    "image_height": image_size,
                    "split": split,
                }
            )
            truth.append({"dicom_id": dicom_id, "label_text": f.sentence, "side": f.side, "zone": f.zone})
    pd.DataFrame(patients).to_csv(out / "patients.csv", index=False)
    pd.DataFrame(truth).to_csv(out / "findings.csv", index=False)
    csv = out / "MS_CXR_Local_Alignment_v1.1.0.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    logger.info("SynthCXR: %d images, %d boxes -> %s", n_images, len(rows), out)
    return csv


def _write_dicom(path: Path, image: np.ndarray, image_id: str, monochrome1: bool) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = (image * 4095).round().astype(np.uint16)
    if monochrome1:
        pixels = 4095 - pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image_id])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = image_id
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_synthcxr_vindr(
    out_dir: str | Path,
    *,
    n_images: int = 200,
    image_size: int = 128,
    seed: int = 1,
    n_radiologists: int = 2,
    monochrome1_rate: float = 0.3,
) -> Path:
    """Write the out-of-distribution SynthCXR variant in the VinDr-CXR format.

    Files: ``annotations/annotations_test.csv`` (image_id, rad_id, class_name, x_min, y_min, x_max,
    y_max; one row per radiologist per box, with two jittered readers), ``test/<image_id>.dicom``
    (12-bit, some MONOCHROME1), ``anatomy/<image_id>.npz``, and ``sentences.csv`` (image_id,
    class_name, sentence, side, zone: the out-of-distribution sentence templates). Every image is in
    the test split.

    >>> import tempfile
    >>> csv = make_synthcxr_vindr(tempfile.mkdtemp(), n_images=3, image_size=32)
    >>> pd.read_csv(csv).columns.tolist()
    ['image_id', 'rad_id', 'class_name', 'x_min', 'y_min', 'x_max', 'y_max']
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows, sentences = [], []
    for i in range(n_images):
        case = generate_case(rng, image_size=image_size, ood=True)
        image_id = f"ood{seed:03d}{i:07d}"
        _write_dicom(
            out / "test" / f"{image_id}.dicom", case.image, image_id, rng.random() < monochrome1_rate
        )
        _save_anatomy(out / "anatomy" / f"{image_id}.npz", case.anatomy)
        for f in case.findings:
            x, y, w, h = f.box
            for r in range(n_radiologists):
                jitter = rng.integers(-1, 2, size=4) if r else np.zeros(4, int)
                rows.append(
                    {
                        "image_id": image_id,
                        "rad_id": f"R{r + 1}",
                        "class_name": VINDR_NAMES[f.category],
                        "x_min": float(max(x + jitter[0], 0)),
                        "y_min": float(max(y + jitter[1], 0)),
                        "x_max": float(min(x + w + jitter[2], image_size)),
                        "y_max": float(min(y + h + jitter[3], image_size)),
                    }
                )
            sentences.append(
                {
                    "image_id": image_id,
                    "class_name": VINDR_NAMES[f.category],
                    "sentence": f.sentence,
                    "side": f.side,
                    "zone": f.zone,
                }
            )
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    csv = out / "annotations" / "annotations_test.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    pd.DataFrame(sentences).to_csv(out / "sentences.csv", index=False)
    return csv


def generate_synthcxr(
    out_dir: str | Path, *, seed: int = 0, n_images: int = 600, image_size: int = 128, vindr: bool = False
) -> Path:
    """Write SynthCXR into ``out_dir`` (``trustmed data synth cxr``) and return the folder.

    Parameters
    ----------
    out_dir : folder to write into (created).
    seed : everything is a deterministic function of it.
    n_images : number of images (at least 3: one per split).
    image_size : side of the square images (at least 32 pixels, for the anatomy to be drawn).
    vindr : write the out-of-distribution variant in the VinDr-CXR format
        (:func:`make_synthcxr_vindr`) instead of the MS-CXR format (:func:`make_synthcxr`).
    """
    if n_images < 3:
        raise InputError(f"SynthCXR: n_images={n_images}; expected at least 3 (one per split)")
    if image_size < 32:
        raise InputError(f"SynthCXR: image_size={image_size}; expected at least 32 pixels")
    make = make_synthcxr_vindr if vindr else make_synthcxr
    make(out_dir, n_images=n_images, image_size=image_size, seed=seed)
    return Path(out_dir)
