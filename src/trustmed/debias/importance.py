"""Parameter importance and the masks built from it.

SWiFT, "Soft-Mask Weight Fine-tuning for Bias Mitigation" (MELBA 2025, arXiv 2508.18826):

* importance of a parameter for a loss ``L`` is the diagonal empirical Fisher over the batches of
  the external set, ``I(θ) = mean_b (∂L_b/∂θ)²`` (:func:`fisher_importance`);
* each importance tensor is min-max normalised on its own,
  ``Ĩ = (I − min)/(max − min + 1e-10)`` (:func:`minmax_normalise`);
* the soft mask is ``m = tanh(Ĩ_b / (Ĩ_p + 1e-10))`` with ``I_b`` the importance for the bias loss
  and ``I_p`` for the prediction loss (:func:`soft_mask`): parameters that matter for bias but not
  for prediction get ``m ≈ 1``, the reverse ``m ≈ 0``.

BMFT, "Achieving Fairness via Bias-based Weight Masking Fine-tuning" (FAIMI 2024,
arXiv 2408.06890) uses the hard mask ``1[Ĩ_b/(Ĩ_p + 1e-10) > mean ratio]`` with the same min-max
normalised importances and one mean over every non-head entry (:func:`hard_mask`).

>>> import torch
>>> bias = {"w": torch.tensor([0.0, 1.0, 2.0])}
>>> pred = {"w": torch.tensor([2.0, 1.0, 0.0])}
>>> m = soft_mask(bias, pred)["w"]
>>> [round(float(v), 4) for v in m]
[0.0, 0.7616, 1.0]
>>> bool((m < 1).all())
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["EPS", "fisher_importance", "minmax_normalise", "soft_mask", "hard_mask", "mask_summary"]

EPS = 1e-10


def fisher_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    names: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher ``mean_b (∂L_b/∂θ)²`` over ``batches``.

    The model runs in eval mode (batch-norm statistics and dropout are left alone, so computing
    importances changes nothing in the model); its train/eval state is restored afterwards.

    Parameters
    ----------
    model : the network; every parameter with ``requires_grad`` (or those in ``names``) is scored.
    batches : iterable of batches (e.g. a ``DataLoader``), each passed to ``loss_fn``.
    loss_fn : ``(model, batch) -> scalar``. A batch whose loss does not depend on the parameters
        (e.g. a bias loss on a batch with a single group) contributes zero gradients.
    names : parameter names to score (default: all trainable ones).

    Returns
    -------
    dict mapping parameter name to a tensor of the parameter's shape (float32, on CPU).
    """
    wanted = set(names) if names is not None else None
    params = {
        n: p
        for n, p in model.named_parameters()
        if (wanted is None and p.requires_grad) or (wanted is not None and n in wanted)
    }
    if not params:
        raise ValueError("fisher_importance: no parameters to score")
    sums = {n: torch.zeros_like(p, dtype=torch.float32, device="cpu") for n, p in params.items()}
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            n_batches += 1
            if not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads, strict=True):
                if grad is not None:
                    sums[name] += grad.detach().float().cpu() ** 2
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("fisher_importance: no batches")
    return {n: s / n_batches for n, s in sums.items()}


def minmax_normalise(tensor: torch.Tensor) -> torch.Tensor:
    """``(t − min)/(max − min + 1e-10)``: one tensor's values mapped to [0, 1]."""
    lo, hi = tensor.min(), tensor.max()
    return (tensor - lo) / (hi - lo + EPS)


def soft_mask(
    bias_importance: Mapping[str, torch.Tensor], pred_importance: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """SWiFT's soft mask ``m = tanh(Ĩ_b / (Ĩ_p + 1e-10))`` per parameter tensor, in [0, 1).

    ``tanh`` of a large ratio rounds to exactly 1 in floating point; such values are set to the
    largest float below 1, so the mask never lets a parameter take its full gradient by rounding.
    """
    masks = {}
    for name, bias in bias_importance.items():
        ratio = minmax_normalise(bias.double()) / (minmax_normalise(pred_importance[name].double()) + EPS)
        mask = torch.tanh(ratio).float()
        below_one = torch.nextafter(torch.ones((), dtype=mask.dtype), torch.zeros((), dtype=mask.dtype))
        masks[name] = torch.minimum(mask, below_one)
    return masks


def hard_mask(
    bias_importance: Mapping[str, torch.Tensor],
    pred_importance: Mapping[str, torch.Tensor],
    *,
    exclude_prefix: str | None = "head.",
) -> dict[str, torch.Tensor]:
    """BMFT's hard mask ``1[r > mean r]`` with ``r = Ĩ_b / (Ĩ_p + 1e-10)``, as the public BMFT code.

    Each importance tensor is min-max normalised on its own (:func:`minmax_normalise`, as for
    :func:`soft_mask`); the threshold is **one** mean of ``r`` over every entry of every tensor
    (not a mean per tensor). Tensors whose name starts with ``exclude_prefix`` (the head) take no
    part in the threshold and get no mask (they are left out of the result); ``None`` excludes
    nothing.
    """
    ratios = {
        name: minmax_normalise(bias.double()) / (minmax_normalise(pred_importance[name].double()) + EPS)
        for name, bias in bias_importance.items()
        if exclude_prefix is None or not name.startswith(exclude_prefix)
    }
    if not ratios:
        raise ValueError("hard_mask: no importance tensors left after excluding the head")
    threshold = torch.cat([r.flatten() for r in ratios.values()]).mean()
    return {name: (r > threshold).float() for name, r in ratios.items()}


def mask_summary(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Mean mask value, fraction of entries above 0.5, and number of entries, over all tensors."""
    flat = torch.cat([m.flatten() for m in masks.values()]) if masks else torch.zeros(0)
    if flat.numel() == 0:
        return {"mean": float("nan"), "frac_above_half": float("nan"), "n": 0}
    return {
        "mean": float(flat.mean()),
        "frac_above_half": float((flat > 0.5).float().mean()),
        "n": flat.numel(),
    }
