"""Deterministic DDIM inversion and single-pass noising of image latents.

DDIM (Song et al., "Denoising Diffusion Implicit Models", arXiv 2010.02502) run backwards maps a
clean latent z_0 to z_t along the model's own deterministic trajectory; zero-shot grounding
(Vilouras et al., arXiv 2404.12920) records the cross-attention along it, with guidance 0 (the
trajectory follows the unconditional prediction). Timestep spacing follows "Common Diffusion Noise
Schedules and Sample Steps are Flawed" (Lin et al., arXiv 2305.08891): ``trailing`` by default.

The model is seen as ``predict(z, t) -> output`` with ``output`` an ε- or v-prediction.

The **band** is where in the noise schedule cross-attention is read: the timesteps t with
``band[0]·T ≤ t < band[1]·T`` (:data:`Band`, :func:`band_timesteps`). The zero-shot grounder records
the inversion steps whose timestep lies in it (:func:`band_steps`); prompt tuning draws its training
timesteps from it, so a tuned prompt is trained where the grounder reads.

>>> ddim_timesteps(1000, 4).tolist()
[249, 499, 749, 999]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator

from trustmed.errors import InputError

__all__ = [
    "Band",
    "DEFAULT_BAND",
    "band_timesteps",
    "band_steps",
    "ddim_timesteps",
    "to_epsilon_and_x0",
    "ddim_invert",
    "noise_latents",
]


def _check_band(band: tuple[float, float]) -> tuple[float, float]:
    if not 0 <= band[0] < band[1] <= 1:
        raise ValueError("expected 0 <= start < end <= 1 (fractions of the noise schedule)")
    return band


Band = Annotated[tuple[float, float], AfterValidator(_check_band)]
"""A config's band: ``(start, end)`` fractions of the noise schedule's T timesteps."""

DEFAULT_BAND: tuple[float, float] = (0.4, 0.6)
"""The middle of the schedule, where the paper records (Vilouras et al., arXiv 2404.12920)."""


def band_timesteps(band: tuple[float, float], num_train_timesteps: int) -> tuple[int, int]:
    """The band's timesteps as ``[lo, hi)`` (at least one timestep).

    >>> band_timesteps((0.4, 0.6), 1000)
    (400, 600)
    """
    lo = round(band[0] * num_train_timesteps)
    return lo, max(lo + 1, round(band[1] * num_train_timesteps))


def band_steps(timesteps: np.ndarray, band: tuple[float, float], num_train_timesteps: int) -> range:
    """Indices of the (increasing) inversion ``timesteps`` that lie in the band.

    With too few steps for any to lie in it, the step nearest to the band's middle is used.

    >>> band_steps(ddim_timesteps(1000, 10), (0.4, 0.6), 1000)
    range(4, 6)
    >>> band_steps(ddim_timesteps(1000, 3), (0.4, 0.6), 1000)  # timesteps 332, 666, 999
    range(1, 2)
    """
    lo, hi = band_timesteps(band, num_train_timesteps)
    steps = np.asarray(timesteps)
    inside = np.flatnonzero((steps >= lo) & (steps < hi))
    if len(inside):
        return range(int(inside[0]), int(inside[-1]) + 1)
    nearest = int(np.argmin(np.abs(steps - (lo + hi - 1) / 2)))
    return range(nearest, nearest + 1)


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing") -> np.ndarray:
    """The ``num_steps`` DDIM timesteps in increasing order (the order inversion visits them).

    ``trailing``: round(T - k·T/N) - 1 (ends at T-1); ``leading``: k·(T // N) (+0);
    ``linspace``: round(linspace(0, T-1, N)).
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise InputError(f"num_steps={num_steps}: expected 1..{num_train_timesteps}")
    if spacing == "trailing":
        steps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)).astype(int) - 1
        return np.sort(steps)
    if spacing == "leading":
        return np.arange(num_steps) * (num_train_timesteps // num_steps)
    if spacing == "linspace":
        return np.round(np.linspace(0, num_train_timesteps - 1, num_steps)).astype(int)
    raise InputError(f"spacing {spacing!r}: expected trailing, leading or linspace")


def to_epsilon_and_x0(
    output: torch.Tensor, z: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output at ᾱ into (ε̂, ẑ_0).

    >>> z0, eps, a = torch.ones(1), torch.zeros(1), torch.tensor(0.5)
    >>> zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    >>> v = a.sqrt() * eps - (1 - a).sqrt() * z0
    >>> [round(float(x), 4) for x in to_epsilon_and_x0(v, zt, a, "v_prediction")]
    [0.0, 1.0]
    """
    if prediction_type == "epsilon":
        eps = output
        x0 = (z - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    elif prediction_type == "v_prediction":
        eps = alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * z
        x0 = alpha_bar.sqrt() * z - (1 - alpha_bar).sqrt() * output
    else:
        raise InputError(f"prediction_type {prediction_type!r}: expected epsilon or v_prediction")
    return eps, x0


@torch.no_grad()
def ddim_invert(
    predict: Callable[[torch.Tensor, int, int], torch.Tensor],
    z0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: np.ndarray,
    prediction_type: str,
    *,
    stop_after: int | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion z_0 → z_{t_N} (guidance 0 is the caller's ``predict``).

    Parameters
    ----------
    predict
        ``predict(z, t, step_index) -> model output``; the caller records attention inside it.
    z0
        Clean latents (B, C, h, w).
    alphas_cumprod
        ᾱ_t for t = 0 … T-1.
    timesteps
        Increasing timesteps (:func:`ddim_timesteps`).
    prediction_type
        ``"epsilon"`` or ``"v_prediction"``.
    stop_after
        Run only the first ``stop_after`` steps (nothing after the recorded band is needed).

    Returns
    -------
    torch.Tensor
        The latent after the last step run.
    """
    z = z0
    alpha_prev = torch.tensor(1.0, dtype=z0.dtype)
    n = len(timesteps) if stop_after is None else min(stop_after, len(timesteps))
    for i in range(n):
        t = int(timesteps[i])
        alpha = alphas_cumprod[t].to(z0.dtype)
        output = predict(z, t, i)
        # the prediction at the target step stands in for the one at the current, less noisy, latent
        eps, _ = to_epsilon_and_x0(output, z, alpha, prediction_type)
        x0 = (z - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
        z = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
        alpha_prev = alpha
    return z


def noise_latents(z0: torch.Tensor, alpha_bar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """z_t = √ᾱ z_0 + √(1-ᾱ) ε with seeded ε (the single-pass mode)."""
    eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
    return alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
