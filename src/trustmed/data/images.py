"""Images from disk into tensors: PNG/JPEG reading and MONAI transforms.

:class:`ImageDataset` turns a manifest (see :mod:`trustmed.data.manifest`) into a torch dataset
whose items are ``{"image": C×H×W float tensor in [0, 1], "label": float tensor, "index": long
tensor}``; ``index`` is the row position in the manifest, so predictions can be joined back to
their metadata. Resizing and intensity scaling use MONAI transforms (Cardoso et al., "MONAI: An
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from trustmed.data.manifest import check_images
from trustmed.errors import InputError

__all__ = ["IMAGE_READERS", "ImageDataset", "make_loader", "read_image"]

log = logging.getLogger(__name__)

# Decoded images kept in memory when the cache is "auto" and the set fits this budget.
AUTO_CACHE_BYTES = 1 << 30


def _read_pil(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'}"
        ) from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


# Suffix → reader ``(path, channels) -> uint8/uint16 C×H×W``; one line per format.
IMAGE_READERS: dict[str, Callable[[Path, int], np.ndarray]] = {
    ".png": _read_pil,
    ".jpg": _read_pil,
    ".jpeg": _read_pil,
}


def read_image(path: str | Path, *, channels: int = 3) -> np.ndarray:
    """Read an image file into a channel-first array (``C×H×W``, usually uint8).

    A missing or corrupt file is an :class:`~trustmed.errors.InputError` naming the file.
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


def _transforms(image_size: int, augment: bool):
    from monai.transforms import Compose, RandFlip, RandRotate90, Resize, ScaleIntensityRange

    load = Compose(
        [
            ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
            Resize(spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
        ]
    )
    aug = None
    if augment:
        aug = Compose(
            [
                RandFlip(prob=0.5, spatial_axis=0),
                RandFlip(prob=0.5, spatial_axis=1),
                RandRotate90(prob=0.5, max_k=3),
            ]
        )
    return load, aug


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
        check_images(manifest, self.root)
        self.paths = [Path(p) if Path(p).is_absolute() else self.root / p for p in manifest["path"]]
        self.labels = torch.as_tensor(manifest["label"].to_numpy(dtype=np.float32))
        self.image_size, self.channels = int(image_size), int(channels)
        self.load, self.augment = _transforms(self.image_size, augment)
        if cache == "auto":
            cache = len(self.paths) * channels * image_size**2 * 4 <= AUTO_CACHE_BYTES
        self._cache: list[torch.Tensor | None] | None = [None] * len(self.paths) if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> torch.Tensor:
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        raw = read_image(self.paths[index], channels=self.channels).astype(np.float32)
        image = torch.as_tensor(np.asarray(self.load(raw)), dtype=torch.float32).contiguous()
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self._load(index)
        if self.augment is not None:
            self.augment.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
            image = torch.as_tensor(np.asarray(self.augment(image)), dtype=torch.float32).contiguous()
        return {"image": image, "label": self.labels[index], "index": torch.tensor(index, dtype=torch.long)}


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
) -> DataLoader:
    """A ``DataLoader`` over :class:`ImageDataset`; shuffling uses its own generator seeded by ``seed``.

    The generator is ``loader.generator`` (its state is saved with training checkpoints).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dataset = ImageDataset(
        manifest, root, image_size=image_size, channels=channels, augment=augment, cache=cache
    )
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
    )
