"""Pendulum images with a known causal graph, deterministic by seed.

The construction of CausalVAE, "CausalVAE: Disentangled representation learning via neural structural
causal models" (Yang et al., CVPR 2021, arXiv 2004.08697): a pendulum hangs from a fixed pivot and a
light source moves along a horizontal line above it; the shadow that the pendulum casts on the ground
has a length and a position fixed by the pendulum angle and the light position (central projection
from the light). The four latents and their DAG are

``angle -> shadow_length, angle -> shadow_position, light -> shadow_length, light -> shadow_position``.

To match coVAE's additive-noise assumption the shadow variables get small Gaussian noise on top of the
geometric projection, and the roots are Gaussian (clipped to keep the scene in frame). Images are
grey-scale, ``image_size`` pixels square, values in ``[0, 1]``: a bright disc for the light, a rod and a
bob for the pendulum, a dark bar for the shadow on the ground line.

:func:`save_pendulum` writes ``x.npy`` (images, ``(n, 1, H, W)`` float32), ``z.npy``, ``adjacency.csv``
and ``meta.json`` into one folder, the same layout as the latent ANM, so
:func:`trustmed.data.synth.anm.load_anm` reads both.
"""

from __future__ import annotations

import numpy as np

from trustmed.data.synth.anm import ANMDataset, save_anm
from trustmed.errors import InputError

__all__ = [
    "PENDULUM_LATENTS",
    "PENDULUM_ADJACENCY",
    "pendulum_latents",
    "render_pendulum",
    "make_pendulum",
    "save_pendulum",
]

PENDULUM_LATENTS = ["angle", "light", "shadow_length", "shadow_position"]
PENDULUM_ADJACENCY = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])

# Scene in unit coordinates, y up: ground at y = 0.
_PIVOT = (0.5, 0.62)
_ROD = 0.28
_LIGHT_HEIGHT = 1.0
_GROUND = 0.12


def _shadow(angle: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geometric shadow (length, centre) of the rod from pivot to bob, projected from the light."""
    bob_x = _PIVOT[0] + _ROD * np.sin(angle)
    bob_y = _PIVOT[1] - _ROD * np.cos(angle)

    def project(px, py):
        return light + (px - light) * (_LIGHT_HEIGHT - _GROUND) / (_LIGHT_HEIGHT - py)

    a, b = project(_PIVOT[0], _PIVOT[1]), project(bob_x, bob_y)
    return np.abs(a - b), 0.5 * (a + b)


def pendulum_latents(n: int, rng: np.random.Generator, *, noise: float = 0.02) -> np.ndarray:
    """Sample the four latents ``(angle, light, shadow_length, shadow_position)``, shape ``(n, 4)``."""
    angle = np.clip(rng.normal(0.0, 0.35, size=n), -0.8, 0.8)
    light = np.clip(0.5 + rng.normal(0.0, 0.15, size=n), 0.15, 0.85)
    length, position = _shadow(angle, light)
    length = length + noise * rng.normal(size=n)
    position = position + noise * rng.normal(size=n)
    return np.stack([angle, light, np.abs(length), position], axis=1)


def _segment_distance(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


def render_pendulum(latents: np.ndarray, image_size: int = 32) -> np.ndarray:
    """Render latents ``(n, 4)`` to images ``(n, 1, image_size, image_size)`` in ``[0, 1]``."""
    lat = np.asarray(latents, dtype=np.float64)
    if lat.ndim != 2 or lat.shape[1] != 4:
        raise InputError(f"latents: expected shape (n, 4) {PENDULUM_LATENTS}, got {lat.shape}")
    coords = (np.arange(image_size) + 0.5) / image_size
    px = coords[None, None, :]
    py = 1.0 - coords[None, :, None]
    pix = 1.0 / image_size

    def soft(dist, radius):
        return np.clip((radius - dist) / pix + 0.5, 0.0, 1.0)

    angle, light, length, position = (lat[:, i, None, None] for i in range(4))
    bob_x = _PIVOT[0] + _ROD * np.sin(angle)
    bob_y = _PIVOT[1] - _ROD * np.cos(angle)
    img = np.full((len(lat), image_size, image_size), 0.25)
    ground = soft(np.abs(py - _GROUND + 0.5 * pix) + 0 * px, 0.5 * pix)
    img = np.maximum(img, 0.45 * ground)
    shadow = soft(np.abs(px - position) - 0.5 * length + 0 * py, 0.0) * soft(np.abs(py - _GROUND), 1.5 * pix)
    img = img * (1 - shadow) + 0.02 * shadow
    rod = soft(_segment_distance(px, py, _PIVOT[0], _PIVOT[1], bob_x, bob_y), 0.6 * pix)
    img = np.maximum(img, 0.7 * rod)
    img = np.maximum(img, 0.9 * soft(np.hypot(px - bob_x, py - bob_y), 0.06))
    img = np.maximum(img, soft(np.hypot(px - light, py - 0.93), 0.05))
    return img[:, None].astype(np.float32)


def make_pendulum(n: int = 2000, *, image_size: int = 32, seed: int = 0, noise: float = 0.02) -> ANMDataset:
    """Pendulum images with true latents and DAG.

    Examples
    --------
    >>> data = make_pendulum(n=8, image_size=16, seed=0)
    >>> data.x.shape, data.z.shape, int(data.adjacency.sum())
    ((8, 1, 16, 16), (8, 4), 4)
    """
    if n < 1:
        raise InputError(f"n: expected at least 1 sample, got {n}")
    if image_size < 8:
        raise InputError(f"image_size: expected at least 8 pixels, got {image_size}")
    rng = np.random.default_rng(seed)
    z = pendulum_latents(n, rng, noise=noise)
    x = render_pendulum(z, image_size)
    meta = {
        "kind": "pendulum",
        "n": n,
        "d": 4,
        "image_size": image_size,
        "seed": seed,
        "noise": noise,
        "order": [0, 1, 2, 3],
        "edges": [[int(i), int(j)] for i, j in zip(*np.nonzero(PENDULUM_ADJACENCY), strict=True)],
        "latent_names": PENDULUM_LATENTS,
    }
    return ANMDataset(
        x=x, z=z.astype(np.float32), adjacency=PENDULUM_ADJACENCY.copy(), order=[0, 1, 2, 3], meta=meta
    )


def save_pendulum(data: ANMDataset, out):
    """Write the images and their latents/DAG (same layout as :func:`trustmed.data.synth.anm.save_anm`)."""
    return save_anm(data, out)
