"""Deterministic DDIM inversion and single-pass noising of image latents.

DDIM (Song et al., "Denoising Diffusion Implicit Models", arXiv 2010.02502) run backwards maps a
clean latent z_0 to z_t along the model's own deterministic trajectory; zero-shot grounding
(Vilouras et al., arXiv 2404.12920) records the cross-attention along it, with guidance 0 (the
trajectory follows the unconditional prediction). Timestep spacing follows "Common Diffusion Noise
Schedules and Sample Steps are Flawed" (Lin et al., arXiv 2305.08891): ``trailing`` by default;
``trailing_integer`` is the integer-ratio variant of the zero-shot paper's code (T // N between steps,
so 300 steps of 1000 visit 334 timesteps 0, 3, …, 999).

The model is seen as ``predict(z, t) -> output`` with ``output`` an ε- or v-prediction.

The **band** is where in the noise schedule cross-attention is read: the timesteps t with
``band[0]·T ≤ t < band[1]·T`` (:data:`Band`, :func:`band_timesteps`). The zero-shot grounder records
the inversion steps whose timestep lies in it (:func:`band_steps`); prompt tuning draws its training
timesteps from it, so a tuned prompt is trained where the grounder reads. The paper's code instead
takes the band as fractions of the *step count* N (steps ⌊0.4·N⌋ … ⌊0.6·N⌋ - 1 of the inversion,
``by="step"``); with its integer-ratio spacing that is t = 360 … 537 for N = 300.

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


def band_steps(
    timesteps: np.ndarray,
    band: tuple[float, float],
    num_train_timesteps: int,
    *,
    by: str = "timestep",
    num_steps: int | None = None,
) -> range:
    """Indices of the (increasing) inversion ``timesteps`` in the band.

    ``by="timestep"``: the steps whose timestep lies in ``[band[0]·T, band[1]·T)``; with too few
    steps for any to lie in it, the step nearest to the band's middle. ``by="step"`` (the paper's
    code): step indices ``⌊band[0]·N⌋ … ⌊band[1]·N⌋ - 1`` with N = ``num_steps`` (default: the number
    of timesteps), at least one step.

    >>> band_steps(ddim_timesteps(1000, 10), (0.4, 0.6), 1000)
    range(4, 6)
    >>> band_steps(ddim_timesteps(1000, 3), (0.4, 0.6), 1000)  # timesteps 332, 666, 999
    range(1, 2)
    >>> steps = ddim_timesteps(1000, 300, "trailing_integer")
    >>> r = band_steps(steps, (0.4, 0.6), 1000, by="step", num_steps=300)
    >>> r, int(steps[r.start]), int(steps[r.stop - 1])
    (range(120, 180), 360, 537)
    """
    if by == "step":
        n = len(timesteps) if num_steps is None else int(num_steps)
        start = min(int(np.floor(band[0] * n)), len(timesteps) - 1)
        return range(start, max(start + 1, min(int(np.floor(band[1] * n)), len(timesteps))))
    if by != "timestep":
        raise InputError(f"band_by {by!r}: expected timestep or step")
    lo, hi = band_timesteps(band, num_train_timesteps)
    steps = np.asarray(timesteps)
    inside = np.flatnonzero((steps >= lo) & (steps < hi))
    if len(inside):
        return range(int(inside[0]), int(inside[-1]) + 1)
    nearest = int(np.argmin(np.abs(steps - (lo + hi - 1) / 2)))
    return range(nearest, nearest + 1)


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing") -> np.ndarray:
    """The ``num_steps`` DDIM timesteps in increasing order (the order inversion visits them).

    ``trailing``: round(T - k·T/N) - 1 (ends at T-1); ``trailing_integer``: T - 1 - k·(T // N) for
    every k that stays ≥ 0 (the zero-shot paper's code: more than N steps when N does not divide T);
    ``leading``: k·(T // N) (+0); ``linspace``: round(linspace(0, T-1, N)).

    >>> len(ddim_timesteps(1000, 300, "trailing")), len(ddim_timesteps(1000, 300, "trailing_integer"))
    (300, 334)
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise InputError(f"num_steps={num_steps}: expected 1..{num_train_timesteps}")
    if spacing == "trailing":
        steps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)).astype(int) - 1
        return np.sort(steps)
    if spacing == "trailing_integer":
        return np.sort(np.arange(num_train_timesteps, 0, -(num_train_timesteps // num_steps)) - 1)
    if spacing == "leading":
        return np.arange(num_steps) * (num_train_timesteps // num_steps)
    if spacing == "linspace":
        return np.round(np.linspace(0, num_train_timesteps - 1, num_steps)).astype(int)
    raise InputError(f"spacing {spacing!r}: expected trailing, trailing_integer, leading or linspace")


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
    prediction_alpha: str = "target",
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
    prediction_alpha
        Which ᾱ turns the output into (ε̂, ẑ_0): ``target`` (the step being moved to) or ``current``
        (the latent's own step, as the paper's code does; differs only for v-prediction).

    Returns
    -------
    torch.Tensor
        The latent after the last step run.
    """
    if prediction_alpha not in ("target", "current"):
        raise InputError(f"prediction_alpha {prediction_alpha!r}: expected target or current")
    z = z0
    alphas = alphas_cumprod.to(device=z0.device, dtype=z0.dtype)
    alpha_prev = torch.tensor(1.0, dtype=z0.dtype, device=z0.device)
    n = len(timesteps) if stop_after is None else min(stop_after, len(timesteps))
    for i in range(n):
        t = int(timesteps[i])
        alpha = alphas[t]
        output = predict(z, t, i)
        if prediction_alpha == "current":
            eps, x0 = to_epsilon_and_x0(output, z, alpha_prev, prediction_type)
        else:
            # the prediction at the target step stands in for the one at the current, less noisy, latent
            eps, _ = to_epsilon_and_x0(output, z, alpha, prediction_type)
            x0 = (z - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
        z = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
        alpha_prev = alpha
    return z


def noise_latents(z0: torch.Tensor, alpha_bar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """z_t = √ᾱ z_0 + √(1-ᾱ) ε with seeded ε (the single-pass mode)."""
    eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
    alpha_bar = alpha_bar.to(device=z0.device, dtype=z0.dtype)
    return alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
