"""SynthSkin: a synthetic, deliberately biased skin-lesion benchmark in the Fitzpatrick17k format.

Each image is a dermoscopy-like RGB patch: skin of Fitzpatrick type 1–6 with a pigmented lesion.
Malignant lesions carry the ABC cues of the dermoscopy checklist (Asymmetry, irregular Border,
Colour variegation; Nachbar et al., "The ABCD rule of dermatology", J Am Acad Dermatol 1994);
benign lesions are rounder and more uniform. Each lesion has a latent severity, drawn from
overlapping distributions for the two classes, so the task is learnable but not trivial.

Two bias knobs reproduce what Groh et al. ("Evaluating Deep Neural Networks Trained on Clinical
Images in Dermatology with the Fitzpatrick 17k Dataset", CVPR-W 2021, arXiv 2104.09957) report for
real data:

* ``train_dark_malignant_ratio`` — dark-skin (types 4–6) malignant cases are under-represented in
  the **train** split: the malignant rate among dark-skin training images is this fraction of the
  light-skin rate. A model learns "dark skin → benign"; debiasing with a small balanced set can
  undo this part of the gap.
* ``dark_contrast`` — on darker skin the lesion's contrast with the surrounding skin is lower in
  **every** split (a physical property), so the cues are harder to see and part of the AUC gap is
  not fixable.

Splits: ``train`` and ``val`` (the skin-type mix ``fitzpatrick_mix``), ``external`` (small,
balanced over skin tone × label, for post-hoc debiasing), ``test`` (balanced over skin tone ×
label) and ``ood`` (another acquisition: colour cast, blur, lower resolution, uniform skin-type
mix). ``val`` has no under-representation of dark malignant cases.

The dataset is written as Fitzpatrick17k is distributed — ``fitzpatrick17k.csv`` with the official
columns and images ``<md5hash>.jpg`` (under ``images/``) — plus a side file ``synthskin_meta.csv``
(md5hash, split, sex, age, patient_id) that :func:`trustmed.data.fitzpatrick.load_fitzpatrick17k`
merges. Everything is a deterministic function of the seed.

>>> import tempfile
>>> out = generate_synthskin(tempfile.mkdtemp(), seed=0, image_size=16, n_train=40, n_val=8,
...                          n_external=8, n_test=8, n_ood=8)
>>> sorted(p.name for p in out.iterdir())
['fitzpatrick17k.csv', 'images', 'synthskin.json', 'synthskin_meta.csv']
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from trustmed.config import Config
from trustmed.data.fitzpatrick import OFFICIAL_COLUMNS
from trustmed.errors import InputError

__all__ = ["FITZPATRICK17K_COLUMNS", "SKIN_RGB", "SynthSkinConfig", "generate_synthskin", "render_lesions"]

log = logging.getLogger(__name__)

# The real dataset's columns, exactly as the loader expects them.
FITZPATRICK17K_COLUMNS: tuple[str, ...] = OFFICIAL_COLUMNS

# Mean skin colour (sRGB in [0, 1]) of Fitzpatrick types 1–6.
SKIN_RGB = np.array(
    [
        [0.96, 0.84, 0.76],
        [0.91, 0.76, 0.64],
        [0.82, 0.64, 0.50],
        [0.64, 0.46, 0.33],
        [0.47, 0.32, 0.22],
        [0.31, 0.21, 0.15],
    ],
    dtype=np.float32,
)

# Fitzpatrick17k diagnoses used for the synthetic classes: (label, nine_partition_label).
_MALIGNANT = [
    ("melanoma", "malignant melanoma"),
    ("basal cell carcinoma", "malignant epidermal"),
    ("squamous cell carcinoma", "malignant epidermal"),
]
_BENIGN = [
    ("nevocytic nevus", "benign melanocyte"),
    ("seborrheic keratosis", "benign epidermal"),
    ("dermatofibroma", "benign dermal"),
]
_DARK_TYPES = (4, 5, 6)
_LIGHT_TYPES = (1, 2, 3)


class SynthSkinConfig(Config):
    """Sizes and bias knobs of SynthSkin (see the module docstring and ``docs/data.md``)."""

    seed: int = 0
    image_size: int = Field(32, ge=16, le=512)
    n_train: int = Field(2400, ge=4)
    n_val: int = Field(500, ge=4)
    n_external: int = Field(240, ge=4)
    n_test: int = Field(1000, ge=4)
    n_ood: int = Field(600, ge=0)
    malignant_rate: float = Field(0.4, gt=0, lt=1)
    fitzpatrick_mix: list[float] = [0.2, 0.27, 0.23, 0.15, 0.1, 0.05]
    train_dark_malignant_ratio: float = Field(0.15, ge=0, le=1)
    dark_contrast: float = Field(0.6, gt=0, le=1)
    cue_strength: float = Field(1.0, ge=0)
    severity_overlap: float = Field(0.15, ge=0, le=1)
    noise: float = Field(0.025, ge=0)
    ood_color_cast: list[float] = [1.08, 0.96, 0.80]
    ood_blur_sigma: float = Field(0.8, ge=0)
    ood_downscale: int = Field(2, ge=1)
    ood_fitzpatrick_mix: list[float] = [1 / 6] * 6
    jpeg_quality: int = Field(95, ge=50, le=100)

    @model_validator(mode="after")
    def _check_mixes(self) -> SynthSkinConfig:
        for name in ("fitzpatrick_mix", "ood_fitzpatrick_mix"):
            mix = getattr(self, name)
            if len(mix) != 6 or any(v < 0 for v in mix) or sum(mix) <= 0:
                raise ValueError(f"{name} must be 6 non-negative weights (types 1-6), got {mix}")
        if len(self.ood_color_cast) != 3:
            raise ValueError(f"ood_color_cast must be 3 RGB factors, got {self.ood_color_cast}")
        return self


def _contrast(fitzpatrick: np.ndarray, dark_contrast: float) -> np.ndarray:
    """Lesion contrast factor: 1 for types 1–3, falling linearly to ``dark_contrast`` at type 6."""
    return 1.0 - (1.0 - dark_contrast) * np.clip(fitzpatrick - 3, 0, 3) / 3.0


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a ``cells × cells`` Gaussian grid upsampled bicubically."""
    coarse = torch.from_numpy(rng.standard_normal((n, 1, cells, cells)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine[:, 0].numpy() / 1.5


def render_lesions(
    rng: np.random.Generator,
    fitzpatrick: np.ndarray,
    severity: np.ndarray,
    age: np.ndarray,
    *,
    image_size: int,
    dark_contrast: float = 0.6,
    cue_strength: float = 1.0,
    noise: float = 0.025,
) -> np.ndarray:
    """Render lesions as float images ``N×H×W×3`` in [0, 1].

    ``severity`` in [0, 1] drives the malignancy cues: border irregularity (harmonics 3–8 of the
    radius), asymmetry (harmonic 1 and an off-centre pigment core) and colour variegation
    (blue-grey and red blotches). Contrast is scaled by the skin type (``dark_contrast``).
    """
    n, s = len(fitzpatrick), image_size
    yy, xx = np.meshgrid(
        np.linspace(-1, 1, s, dtype=np.float32), np.linspace(-1, 1, s, dtype=np.float32), indexing="ij"
    )
    cue = np.clip(severity * cue_strength, 0, 1.5).astype(np.float32)
    contrast = _contrast(fitzpatrick, dark_contrast).astype(np.float32)

    skin = SKIN_RGB[fitzpatrick - 1] * rng.uniform(0.93, 1.07, (n, 1)).astype(np.float32)
    skin = skin + rng.normal(0, 0.015, (n, 3)).astype(np.float32)
    mottling = (0.02 + 0.04 * np.clip((age - 20) / 70, 0, 1)).astype(np.float32)
    texture = 1 + mottling[:, None, None] * _smooth_noise(rng, n, s, 8)
    shading = 1 + 0.06 * (
        rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) * xx
        + rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32) * yy
    )
    image = skin[:, None, None, :] * (texture * shading)[..., None]

    cx, cy = (rng.uniform(-0.15, 0.15, (2, n, 1, 1))).astype(np.float32)
    dx, dy = xx[None] - cx, yy[None] - cy
    dist = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    radius = rng.uniform(0.32, 0.5, (n, 1, 1)).astype(np.float32) * (1 + 0.25 * cue[:, None, None])
    ellipse = rng.uniform(0.0, 0.12, (n, 1, 1)).astype(np.float32)
    rho = 1 + ellipse * np.cos(2 * (theta - rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)))
    harmonics = np.arange(3, 9, dtype=np.float32)
    amps = rng.normal(0, 1, (n, len(harmonics))).astype(np.float32) / harmonics
    phases = rng.uniform(0, 2 * np.pi, (n, len(harmonics))).astype(np.float32)
    wiggle = np.einsum("nk,nhwk->nhw", amps, np.cos(harmonics * theta[..., None] + phases[:, None, None, :]))
    rho = rho + 0.45 * cue[:, None, None] * wiggle
    rho = rho + 0.25 * cue[:, None, None] * np.cos(
        theta - rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    )
    edge = (0.04 + 0.05 * cue[:, None, None]) * radius
    mask = 0.5 * (1 + np.tanh((radius * rho - dist) / (2 * edge)))

    depth = rng.uniform(0.4, 0.62, (n, 1, 1)).astype(np.float32) * contrast[:, None, None]
    core_x = cx + 0.35 * cue[:, None, None] * radius * rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32)
    core_y = cy + 0.35 * cue[:, None, None] * radius * rng.uniform(-1, 1, (n, 1, 1)).astype(np.float32)
    core = np.exp(-((xx[None] - core_x) ** 2 + (yy[None] - core_y) ** 2) / (2 * (0.6 * radius) ** 2))
    darkening = depth * (0.75 + 0.25 * core)
    tint = np.array([0.85, 1.0, 1.08], dtype=np.float32)
    lesion = image * (1 - darkening[..., None] * tint)

    blotch_blue = np.clip(_smooth_noise(rng, n, s, 5), 0, None)
    blotch_red = np.clip(_smooth_noise(rng, n, s, 5), 0, None)
    vari = (1.6 * cue * contrast)[:, None, None, None]
    blue = np.array([-0.55, -0.35, -0.05], dtype=np.float32)
    red = np.array([0.25, -0.30, -0.30], dtype=np.float32)
    lesion = lesion * (1 + vari * (blotch_blue[..., None] * blue + blotch_red[..., None] * red))

    image = image + mask[..., None] * (lesion - image)
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def _acquisition_shift(images: np.ndarray, cfg: SynthSkinConfig) -> np.ndarray:
    """The OOD "scanner": lower resolution, blur and a colour cast."""
    from scipy.ndimage import gaussian_filter

    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if cfg.ood_downscale > 1:
        small = max(4, cfg.image_size // cfg.ood_downscale)
        x = torch.nn.functional.interpolate(x, size=(small, small), mode="area")
        x = torch.nn.functional.interpolate(
            x, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False
        )
    out = x.numpy().transpose(0, 2, 3, 1)
    if cfg.ood_blur_sigma > 0:
        out = gaussian_filter(out, sigma=(0, cfg.ood_blur_sigma, cfg.ood_blur_sigma, 0))
    return np.clip(out * np.asarray(cfg.ood_color_cast, dtype=np.float32), 0, 1)


def _balanced_cells(n: int) -> list[tuple[str, int, int]]:
    """``n`` rows balanced over skin tone × label: (tone, label, count)."""
    counts = [n // 4 + (1 if i < n % 4 else 0) for i in range(4)]
    return [("light", 0, counts[0]), ("light", 1, counts[1]), ("dark", 0, counts[2]), ("dark", 1, counts[3])]


def _sample_split(rng: np.random.Generator, split: str, n: int, cfg: SynthSkinConfig) -> pd.DataFrame:
    if split in ("test", "external"):
        parts = []
        for tone, label, count in _balanced_cells(n):
            types = _DARK_TYPES if tone == "dark" else _LIGHT_TYPES
            parts.append(pd.DataFrame({"fitzpatrick": rng.choice(types, count), "label": label}))
        rows = pd.concat(parts, ignore_index=True)
    else:
        mix = np.asarray(cfg.ood_fitzpatrick_mix if split == "ood" else cfg.fitzpatrick_mix, dtype=float)
        fitz = rng.choice(np.arange(1, 7), size=n, p=mix / mix.sum())
        rate = np.full(n, 0.5 if split == "ood" else cfg.malignant_rate)
        if split == "train":
            rate = np.where(fitz >= 4, rate * cfg.train_dark_malignant_ratio, rate)
        rows = pd.DataFrame({"fitzpatrick": fitz, "label": (rng.random(n) < rate).astype(int)})
    rows["split"] = split
    return _assign_patients(rng, rows)


def _assign_patients(rng: np.random.Generator, rows: pd.DataFrame) -> pd.DataFrame:
    """Group rows of one skin type into patients of 1–3 images; draw each patient's sex and age."""
    rows = (
        rows.iloc[rng.permutation(len(rows))].sort_values("fitzpatrick", kind="stable").reset_index(drop=True)
    )
    sizes = rng.choice([1, 2, 3], size=len(rows), p=[0.6, 0.3, 0.1])
    patient = np.empty(len(rows), dtype=np.int64)
    i = p = 0
    for size in sizes:
        if i >= len(rows):
            break
        end = min(i + size, len(rows))
        end = i + int(np.sum(rows["fitzpatrick"].to_numpy()[i:end] == rows["fitzpatrick"].iat[i]))
        patient[i:end] = p
        i, p = end, p + 1
    rows["patient"] = patient
    per_patient = rows.groupby("patient")["label"].max().to_numpy()
    sex = rng.choice(np.array(["female", "male"], dtype=object), size=p)
    age = np.where(per_patient == 1, rng.normal(63, 13, p), rng.normal(46, 15, p))
    rows["sex"] = sex[patient]
    rows["age"] = np.clip(np.round(age), 18, 95).astype(int)[patient]
    return rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)


def _severity(rng: np.random.Generator, labels: np.ndarray, overlap: float) -> np.ndarray:
    """Latent severity in [0, 1]: malignant ~ U(0.5 - overlap/2, 1), benign ~ U(0, 0.5 + overlap/2)."""
    half = overlap / 2
    u = rng.random(len(labels))
    return np.where(labels == 1, (0.5 - half) + u * (0.5 + half), u * (0.5 + half)).astype(np.float32)


def _official_columns(rng: np.random.Generator, rows: pd.DataFrame, seed: int, offset: int) -> pd.DataFrame:
    n = len(rows)
    md5 = [hashlib.md5(f"synthskin:{seed}:{offset + i}".encode()).hexdigest() for i in range(n)]
    pick = rng.integers(0, 3, n)
    names = [(_MALIGNANT if lab == 1 else _BENIGN)[k] for lab, k in zip(rows["label"], pick, strict=True)]
    centaur = np.clip(rows["fitzpatrick"].to_numpy() + rng.choice([-1, 0, 0, 0, 0, 1], n), 1, 6)
    urls = [f"https://synthskin.invalid/{rows['split'].iat[i]}/{md5[i]}.jpg" for i in range(n)]
    return pd.DataFrame(
        {
            "md5hash": md5,
            "fitzpatrick_scale": rows["fitzpatrick"].to_numpy(),
            "fitzpatrick_centaur": centaur,
            "label": [a for a, _ in names],
            "nine_partition_label": [b for _, b in names],
            "three_partition_label": np.where(rows["label"] == 1, "malignant", "benign"),
            "qc": "",
            "url": urls,
            "url_alphanum": ["".join(ch for ch in u[:-4] if ch.isalnum()) + ".jpg" for u in urls],
        }
    )


def generate_synthskin(out_dir: str | Path, *, seed: int = 0, **knobs: Any) -> Path:
    """Write SynthSkin to ``out_dir`` and return it.

    Parameters
    ----------
    out_dir : destination folder (created; existing SynthSkin files are overwritten).
    seed : everything (rows, images, hashes) is a deterministic function of it.
    **knobs : any :class:`SynthSkinConfig` field, e.g. ``image_size``, ``n_train``, ``n_val``,
        ``n_external``, ``n_test``, ``n_ood``, ``train_dark_malignant_ratio``, ``dark_contrast``.
    """
    from PIL import Image
    from pydantic import ValidationError

    try:
        cfg = SynthSkinConfig(seed=seed, **knobs)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(f"SynthSkin option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    sizes = {
        "train": cfg.n_train,
        "val": cfg.n_val,
        "external": cfg.n_external,
        "test": cfg.n_test,
        "ood": cfg.n_ood,
    }
    tables, metas, offset = [], [], 0
    for split, n in sizes.items():
        if n == 0:
            continue
        rows = _sample_split(rng, split, n, cfg)
        official = _official_columns(rng, rows, cfg.seed, offset)
        severity = _severity(rng, rows["label"].to_numpy(), cfg.severity_overlap)
        for start in range(0, n, 512):
            stop = min(start + 512, n)
            batch = render_lesions(
                rng,
                rows["fitzpatrick"].to_numpy()[start:stop],
                severity[start:stop],
                rows["age"].to_numpy()[start:stop].astype(np.float32),
                image_size=cfg.image_size,
                dark_contrast=cfg.dark_contrast,
                cue_strength=cfg.cue_strength,
                noise=cfg.noise,
            )
            if split == "ood":
                batch = _acquisition_shift(batch, cfg)
            pixels = np.round(batch * 255).astype(np.uint8)
            for j, name in enumerate(official["md5hash"].iloc[start:stop]):
                Image.fromarray(pixels[j]).save(images_dir / f"{name}.jpg", quality=cfg.jpeg_quality)
        tables.append(official)
        metas.append(
            pd.DataFrame(
                {
                    "md5hash": official["md5hash"],
                    "split": split,
                    "sex": rows["sex"].to_numpy(),
                    "age": rows["age"].to_numpy(),
                    "patient_id": [f"{split}-{p:05d}" for p in rows["patient"]],
                }
            )
        )
        offset += n
    pd.concat(tables, ignore_index=True).to_csv(out / "fitzpatrick17k.csv", index=False)
    pd.concat(metas, ignore_index=True).to_csv(out / "synthskin_meta.csv", index=False)
    (out / "synthskin.json").write_text(
        json.dumps({"generator": "synthskin", **cfg.model_dump()}, indent=2) + "\n"
    )
    log.info("SynthSkin written to %s (%d images)", out, offset)
    return out
