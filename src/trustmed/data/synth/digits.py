"""ColoredDigits: real handwritten digits on a coloured background that is spuriously tied to the label.

The digits are scikit-learn's bundled UCI handwritten digits (1,797 real 8x8 scans; Alpaydin &
Kaynak, UCI ML repository), so the shapes are real while the shortcut is controlled. The label is
``digit >= 5``; the spurious attribute is the background colour (``place``: 0 = red, 1 = blue). In
the training split the colour agrees with the label for a fraction ``spurious_correlation`` of the
images; validation and test are balanced (every label x colour group the same size in expectation),
as in Waterbirds (Sagawa et al., arXiv 1911.08731), so worst-group accuracy there reveals a model that
learned the colour instead of the digit.

The dataset is written in the Waterbirds layout (``metadata.csv`` with ``img_id, img_filename, y,
split, place``; split 0/1/2 = train/val/test) so :func:`trustmed.data.waterbirds.load_waterbirds`
reads it.

>>> from sklearn.datasets import load_digits
>>> scans = load_digits().images[:2]
>>> images = render_digits(scans, np.array([0, 1]), image_size=16, rng=np.random.default_rng(0))
>>> images.shape, images.dtype.name, bool(images[0, 0, 0, 0] > images[0, 0, 0, 2])  # red background
((2, 16, 16, 3), 'uint8', True)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from trustmed.errors import InputError
from trustmed.io import atomic_write_text

__all__ = ["BACKGROUNDS", "make_colored_digits", "render_digits"]

log = logging.getLogger(__name__)

#: RGB background of each ``place`` value (0 = red, 1 = blue); strokes are drawn in white.
BACKGROUNDS = np.array([[0.80, 0.15, 0.10], [0.10, 0.25, 0.85]])


def render_digits(
    digits: np.ndarray, places: np.ndarray, *, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Render 8x8 digit scans (values 0-16) as uint8 RGB images ``(n, size, size, 3)``.

    Each image gets its background colour with a small random jitter and a little pixel noise, so
    colour is an easy but not a perfectly constant cue.
    """
    import torch
    import torch.nn.functional as F

    ink = torch.as_tensor(digits, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    ink = F.interpolate(ink, size=(image_size, image_size), mode="bilinear", align_corners=False)
    ink = ink.clamp(0, 1).numpy()[:, 0, :, :, None]  # (n, s, s, 1)
    background = BACKGROUNDS[places] + rng.normal(0, 0.05, size=(len(places), 3))
    background = background[:, None, None, :]
    image = background * (1 - ink) + 0.95 * ink
    image = image + rng.normal(0, 0.03, size=image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _split_indices(n: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    split = np.empty(n, dtype=np.int64)
    split[order[:n_train]] = 0
    split[order[n_train : n_train + n_val]] = 1
    split[order[n_train + n_val :]] = 2
    return split


def _assign_places(
    y: np.ndarray, split: np.ndarray, spurious_correlation: float, rng: np.random.Generator
) -> np.ndarray:
    """Background colour per image: in training it equals the label for exactly the requested
    fraction of each class; in validation and test each class is split half/half between colours."""
    place = np.empty_like(y)
    for s in (0, 1, 2):
        agree = spurious_correlation if s == 0 else 0.5
        for label in (0, 1):
            members = rng.permutation(np.flatnonzero((split == s) & (y == label)))
            n_agree = int(round(agree * len(members)))
            place[members[:n_agree]] = label
            place[members[n_agree:]] = 1 - label
    return place


def make_colored_digits(
    out_dir: str | Path,
    *,
    seed: int = 0,
    spurious_correlation: float = 0.95,
    image_size: int = 28,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> Path:
    """Write ColoredDigits (images + Waterbirds-style ``metadata.csv``) into ``out_dir``.

    Parameters
    ----------
    out_dir : folder to write into (created).
    seed : seed of the split, the colours and the noise; the same seed gives identical files.
    spurious_correlation : probability that the background colour equals the label in training.
    image_size : side of the square PNG images.
    split_fractions : train/val/test fractions of the 1,797 digits.

    Returns
    -------
    The folder, containing ``metadata.csv`` and ``digit_<d>/<img_id>.png``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if not 0.0 <= spurious_correlation <= 1.0:
        raise InputError(f"spurious_correlation must be in [0, 1], got {spurious_correlation}")
    if image_size < 8:
        raise InputError(f"image_size must be >= 8, got {image_size}")
    if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-6 or min(split_fractions) <= 0:
        raise InputError(
            f"split_fractions must be three positive fractions summing to 1, got {split_fractions}"
        )
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    images, target = digits.images, digits.target
    y = (target >= 5).astype(np.int64)
    split = _split_indices(len(y), split_fractions, rng)
    place = _assign_places(y, split, spurious_correlation, rng)
    pixels = render_digits(images, place, image_size=image_size, rng=rng)
    img_id = np.arange(1, len(y) + 1)
    filenames = [f"digit_{d}/{i:05d}.png" for i, d in zip(img_id, target, strict=True)]
    for folder in {name.split("/")[0] for name in filenames}:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for name, array in zip(filenames, pixels, strict=True):
        Image.fromarray(array).save(out_dir / name, format="PNG")
    meta = pd.DataFrame({"img_id": img_id, "img_filename": filenames, "y": y, "split": split})
    meta["place"] = place
    atomic_write_text(out_dir / "metadata.csv", meta.to_csv(index=False))
    log.info("wrote %d ColoredDigits images to %s", len(meta), out_dir)
    return out_dir
