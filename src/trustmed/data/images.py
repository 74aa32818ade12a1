"""Images from disk into arrays and tensors: the one image reader of every capability, and MONAI transforms.

:func:`read_image` decodes a PNG, JPEG or DICOM file once and :func:`to_unit_float` applies the one
normalisation to [0, 1]; classification (:class:`ImageDataset`) and phrase grounding
(:func:`read_grayscale`, which :func:`trustmed.data.mscxr.read_image` is) read every file through
them, so both see the same pixels:

- 8-bit PNG/JPEG: value / 255 (colour is converted to grayscale with Pillow's ITU-R 601-2 luma when
  one channel is asked for);
- 16-bit (and 32-bit integer) grayscale PNG: value / the image's maximum, since the bit depth the
  data actually use (often 12 of the 16) is not recorded in the file;
- DICOM (``.dcm``, ``.dicom``; needs ``pip install 'trustmed[dicom]'``), decoded with pydicom as a
  radiologist's viewer would show it (DICOM PS3.3 C.11, "Modality LUT" and "VOI LUT"): the Modality
  LUT (rescale slope/intercept), then the VOI LUT or window centre/width, then scaled to [0, 1] by
  the result's minimum and maximum; ``MONOCHROME1`` images (where a high value is dark) are
  inverted so that bone is bright in every image. 12- and 16-bit data are read as floats, never
  truncated to 8 bits.

:class:`ImageDataset` turns a manifest (see :mod:`trustmed.data.manifest`) into a torch dataset
whose items are ``{"image": C×H×W float tensor in [0, 1], "label": float tensor, "index": long
tensor}``; ``index`` is the row position in the manifest, so predictions can be joined back to
their metadata.

When a dataset is built every listed image is checked cheaply (:func:`image_problem`: the file
exists, starts with its format's signature and, for PNG and JPEG, ends with its end marker, so a
truncated file is found), so a bad image stops a run before training starts, not after an epoch.
With ``skip_bad_images=True`` a missing or unreadable image is left out rather than stopping the
run: images that fail the check are dropped when the dataset is built, ones that fail to decode
when a batch is put together, and both are counted (:attr:`ImageDataset.n_skipped`, and
``n_skipped`` in each batch).

Resizing and intensity scaling use MONAI transforms (Cardoso et al., "MONAI: An
open-source framework for deep learning in healthcare", arXiv 2211.02701); the deterministic part
is cached in memory for small sets, so a few thousand small JPEGs are decoded once, not every epoch.

>>> import tempfile, pathlib, numpy as np, pandas as pd
>>> from PIL import Image
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(root / "a.png")
>>> df = pd.DataFrame({"sample_id": ["a"], "path": ["a.png"], "label": [1], "split": ["train"],
...                    "patient_id": ["a"]})
>>> item = ImageDataset(df, root, image_size=8)[0]
>>> tuple(item["image"].shape), round(float(item["image"].max()), 3), float(item["label"])
((3, 8, 8), 1.0, 1.0)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from trustmed.errors import InputError

__all__ = [
    "IMAGE_READERS",
    "ImageDataset",
    "collate_skipping",
    "image_problem",
    "image_problems",
    "make_loader",
    "random_flip_rotate",
    "read_grayscale",
    "read_image",
    "to_unit_float",
]

log = logging.getLogger(__name__)

# Decoded images kept in memory when the cache is "auto" and the set fits this budget.
AUTO_CACHE_BYTES = 1 << 30


# Pillow modes of grayscale images with more than 8 bits per pixel.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _read_pil(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in _WIDE_MODES:
                wide = np.asarray(img, dtype=np.float32)
                image = (np.clip(wide, 0.0, None) / max(float(wide.max()), 1.0))[None]
                return np.repeat(image, 3, axis=0) if channels == 3 else image
            array = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise InputError(f"cannot read image {path}: unreadable ({reason})") from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputError("reading DICOM needs pydicom: pip install 'trustmed[dicom]'") from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return pydicom, apply_modality_lut, apply_voi_lut


def _read_dicom(path: Path, channels: int) -> np.ndarray:
    pydicom, apply_modality_lut, apply_voi_lut = _pydicom()
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many exception types for a broken file
        raise InputError(
            f"cannot read image {path}: not a readable DICOM ({exc.__class__.__name__})"
        ) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"cannot read image {path}: the DICOM has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # unsupported transfer syntax, truncated pixel data, ...
        raise InputError(f"cannot read image {path}: DICOM pixel data not decodable ({exc})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if raw.ndim != 2 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"cannot read image {path}: expected a single-frame grayscale DICOM "
            f"(MONOCHROME1/2), got shape {raw.shape} and {photometric}"
        )
    values = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    image = scaled.astype(np.float32)[None]
    return np.repeat(image, 3, axis=0) if channels == 3 else image


# Suffix → reader ``(path, channels) -> C×H×W`` array: uint8 (0–255) or float32 in [0, 1], already
# normalised as the module docstring says; one line per format.
IMAGE_READERS: dict[str, Callable[[Path, int], np.ndarray]] = {
    ".png": _read_pil,
    ".jpg": _read_pil,
    ".jpeg": _read_pil,
    ".dcm": _read_dicom,
    ".dicom": _read_dicom,
}


def read_image(path: str | Path, *, channels: int = 3) -> np.ndarray:
    """Read an image file into a channel-first array (``C×H×W``).

    8-bit PNG/JPEG give uint8 (0–255); 16-bit PNG and DICOM give float32 in [0, 1] (see the module
    docstring); :func:`to_unit_float` turns either into [0, 1]. A missing or corrupt file, or a
    DICOM without pixel data, is an :class:`~trustmed.errors.InputError` naming the file.
    """
    path = Path(path)
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    reader = IMAGE_READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(
            f"{path}: unsupported image format {path.suffix!r}; expected one of {sorted(IMAGE_READERS)}"
        )
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    return reader(path, channels)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """A :func:`read_image` array as float32 in [0, 1]: uint8 values are divided by 255.

    >>> to_unit_float(np.array([[0, 255]], np.uint8)).tolist(), to_unit_float(np.float32([[0.5]])).tolist()
    ([[0.0, 1.0]], [[0.5]])
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def read_grayscale(path: str | Path) -> np.ndarray:
    """One image as a 2-D (``H×W``) float32 array in [0, 1]: :func:`read_image` with one channel.

    The pixels are exactly those of channel 0 of a one-channel :class:`ImageDataset` item before
    resizing. Phrase grounding reads images with it (:func:`trustmed.data.mscxr.read_image`).

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "g.png"
    >>> Image.fromarray(np.array([[0, 255]], np.uint8)).save(path)
    >>> image = read_grayscale(path)
    >>> image.shape, image.dtype.name, image.tolist()
    ((1, 2), 'float32', [[0.0, 1.0]])
    """
    return to_unit_float(read_image(path, channels=1))[0]


# (format name, signature at the start, end marker expected in the last 4 KiB or None)
_SIGNATURES: dict[str, tuple[str, int, bytes, bytes | None]] = {
    ".png": ("PNG", 0, b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
    ".jpg": ("JPEG", 0, b"\xff\xd8\xff", b"\xff\xd9"),
    ".jpeg": ("JPEG", 0, b"\xff\xd8\xff", b"\xff\xd9"),
    ".dcm": ("DICOM", 128, b"DICM", None),
    ".dicom": ("DICOM", 128, b"DICM", None),
}


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable image, from its first and last bytes only; ``None`` if it looks fine.

    Finds missing, empty and foreign files (a wrong signature) and truncated PNG/JPEG files (no end
    marker); damage in the middle of a file is found when it is decoded.

    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> _ = bad.write_bytes(b"not an image")
    >>> image_problem(bad)
    'not a PNG file (wrong signature)'
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SIGNATURES:
        return f"unsupported image format {path.suffix!r}; expected one of {sorted(IMAGE_READERS)}"
    name, offset, signature, end = _SIGNATURES[suffix]
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a file"
        with open(path, "rb") as fh:
            head = fh.read(offset + len(signature))
            fh.seek(max(0, size - 4096))
            tail = fh.read()
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "empty file"
    if head[offset:] != signature:
        return f"not a {name} file (wrong signature)"
    if end is not None and end not in tail:
        return f"truncated {name} file (no end marker)"
    return None


def image_problems(paths: Sequence[Path]) -> list[str | None]:
    """:func:`image_problem` of every path (in threads: on a network file system the checks wait on I/O)."""
    if len(paths) < 256:
        return [image_problem(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(image_problem, paths, chunksize=64))


def _transforms(image_size: int):
    from monai.transforms import Resize

    return Resize(spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True)


def random_flip_rotate(image: torch.Tensor) -> torch.Tensor:
    """Random vertical flip, horizontal flip and 90° rotation (each with probability ½) of a C×H×W image.

    The same augmentation as MONAI's ``RandFlip`` ×2 + ``RandRotate90(max_k=3)``, written with
    torch ops on the global torch RNG: about 50× cheaper per small image than re-seeding MONAI's
    per-transform random states for every item, and resumed runs repeat it exactly.
    """
    draws = torch.rand(3)
    if draws[0] < 0.5:
        image = image.flip(-2)
    if draws[1] < 0.5:
        image = image.flip(-1)
    if draws[2] < 0.5:
        image = torch.rot90(image, int(torch.randint(1, 4, ())), dims=(-2, -1))
    return image.contiguous()


class ImageDataset(Dataset):
    """A torch dataset over a manifest's images.

    Parameters
    ----------
    manifest : DataFrame with at least ``path`` and ``label``.
    root : folder that relative ``path`` values are relative to.
    image_size : side of the square image fed to the model.
    channels : 3 (RGB) or 1 (grayscale).
    augment : random flips and 90° rotations (MONAI), drawn from torch's global RNG so runs repeat
        with a seed and resume exactly.
    cache : keep resized images in memory: ``True``, ``False`` or ``"auto"`` (on when they fit
        in 1 GiB).
    skip_bad_images : leave out missing images (when the dataset is built) and unreadable ones
        (an item becomes ``None``, which :func:`collate_skipping` drops) instead of raising;
        :attr:`n_skipped` and :attr:`skipped` count and name them.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path | None,
        *,
        image_size: int,
        channels: int = 3,
        augment: bool = False,
        cache: bool | str = "auto",
        skip_bad_images: bool = False,
    ):
        if image_size < 4:
            raise InputError(f"image_size must be >= 4, got {image_size}")
        for col in ("path", "label"):
            if col not in manifest.columns:
                raise InputError(
                    f"manifest: missing column {col!r}; available: {', '.join(manifest.columns)}"
                )
        self.root = Path(root) if root is not None else Path(".")
        if self.root.is_file():
            self.root = self.root.parent
        self.skip_bad_images = bool(skip_bad_images)
        paths = [Path(p) if Path(p).is_absolute() else self.root / p for p in manifest["path"]]
        problems = image_problems(paths)
        present = np.array([problem is None for problem in problems], dtype=bool)
        # (path, reason) of every image left out; ``rows`` maps item position → manifest row.
        self.skipped: list[tuple[str, str]] = [
            (str(p), problem) for p, problem in zip(paths, problems, strict=True) if problem is not None
        ]
        if self.skipped and not self.skip_bad_images:
            path, problem = self.skipped[0]
            others = f"; {len(self.skipped) - 1} other image(s) too" if len(self.skipped) > 1 else ""
            if problem == "not found":
                raise InputError(
                    f"image not found: {path} ({len(paths)} images expected under {self.root}{others})"
                )
            raise InputError(f"cannot read image {path}: {problem}{others}")
        if self.skipped:
            log.warning(
                "%d of %d images missing or unreadable and skipped (first: %s, %s)",
                len(self.skipped),
                len(paths),
                *self.skipped[0],
            )
        self.rows = np.flatnonzero(present)
        self.paths = [paths[i] for i in self.rows]
        self.labels = torch.as_tensor(manifest["label"].to_numpy(dtype=np.float32)[self.rows])
        self.image_size, self.channels = int(image_size), int(channels)
        self.load, self.augment = _transforms(self.image_size), bool(augment)
        self.n_rows = len(manifest)
        if cache == "auto":
            cache = len(self.paths) * channels * image_size**2 * 4 <= AUTO_CACHE_BYTES
        self._cache: list[torch.Tensor | None] | None = [None] * len(self.paths) if cache else None

    @property
    def n_skipped(self) -> int:
        """Images left out so far (missing ones, and unreadable ones met in this process)."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> torch.Tensor:
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        raw = to_unit_float(read_image(self.paths[index], channels=self.channels))
        image = torch.as_tensor(np.asarray(self.load(raw)), dtype=torch.float32).contiguous()
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        try:
            image = self._load(index)
        except InputError as exc:
            if not self.skip_bad_images:
                raise
            if all(path != str(self.paths[index]) for path, _ in self.skipped):
                self.skipped.append((str(self.paths[index]), str(exc)))
                log.warning("skipped: %s", exc)
            return None
        if self.augment:
            image = random_flip_rotate(image)
        row = int(self.rows[index])
        return {"image": image, "label": self.labels[index], "index": torch.tensor(row, dtype=torch.long)}


def collate_skipping(items: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """Collate a batch without its ``None`` items (unreadable images); ``n_skipped`` counts them.

    A batch whose every image is unreadable is an :class:`~trustmed.errors.InputError`.

    >>> item = {"image": torch.zeros(1, 2, 2), "label": torch.tensor(1.0), "index": torch.tensor(0)}
    >>> batch = collate_skipping([item, None])
    >>> tuple(batch["image"].shape), int(batch["n_skipped"])
    ((1, 1, 2, 2), 1)
    """
    from torch.utils.data import default_collate

    good = [item for item in items if item is not None]
    if not good:
        raise InputError(f"all {len(items)} images of a batch are unreadable (see the warnings above)")
    batch = default_collate(good)
    batch["n_skipped"] = torch.tensor(len(items) - len(good), dtype=torch.long)
    return batch


def make_loader(
    manifest: pd.DataFrame,
    root: str | Path | None,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    augment: bool = False,
    num_workers: int = 0,
    channels: int = 3,
    cache: bool | str = "auto",
    skip_bad_images: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over :class:`ImageDataset`; shuffling uses its own generator seeded by ``seed``.

    The generator is ``loader.generator`` (its state is saved with training checkpoints). With
    ``skip_bad_images`` the batches come from :func:`collate_skipping`: missing images are counted
    in ``loader.dataset.n_skipped`` and unreadable ones in each batch's ``n_skipped`` (summing those
    is exact with worker processes too).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dataset = ImageDataset(
        manifest,
        root,
        image_size=image_size,
        channels=channels,
        augment=augment,
        cache=cache,
        skip_bad_images=skip_bad_images,
    )
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
        collate_fn=collate_skipping if skip_bad_images else None,
    )
