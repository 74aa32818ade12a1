"""Losses of post-hoc debiasing: weighted BCE and differentiable fairness proxies.

The prediction loss and the bias loss follow SWiFT, "Soft-Mask Weight Fine-tuning for Bias
Mitigation" (MELBA 2025, arXiv 2508.18826):

* weighted BCE, ``WBCE = Np/(Nn+Np) · BCEWithLogits(pos_weight=Nn/Np)``, with ``Nn`` and ``Np`` the
  numbers of negatives and positives in the batch;
* a bias loss built from *soft* rates (``p = sigmoid(logit)``): soft TPR of group ``g`` is the mean
  of ``p`` over ``{y=1, A=g}``, soft FPR the mean over ``{y=0, A=g}``, soft selection rate the mean
  over ``{A=g}``. ``eodds = ½(gap(TPR) + gap(FPR))``, ``eopp = gap(TPR)``, ``dp = gap(SR)``, where
  ``gap`` is max − min over the groups present in the batch, for any number K ≥ 2 of groups.

When ``p`` is exactly 0/1 the soft rates are the hard rates, so the proxies equal the gaps of
``trustmed.metrics`` (``eodds_mean_gap``, ``eopp_tpr_gap``, ``dp_gap``).

>>> import torch
>>> y = torch.tensor([1., 1., 0., 0.]); g = torch.tensor([0, 1, 0, 1])
>>> scores = torch.tensor([1., 0., 0., 0.])
>>> float(soft_rate_gaps(scores, y, g)["tpr"])
1.0
>>> float(bias_loss_from_probs(scores, y, g, kind="eodds"))
0.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BIAS_LOSSES", "wbce", "soft_rate_gaps", "bias_loss", "bias_loss_from_probs"]

BIAS_LOSSES = ("eodds", "eopp", "dp")


def wbce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy with class counts taken from the batch.

    ``Np/(Nn+Np) · BCEWithLogits(pos_weight = Nn/Np)``. A batch with a single class has no
    defined ``pos_weight``; it falls back to the plain mean BCE.

    Parameters
    ----------
    logits : tensor of shape (B,)
    labels : tensor of shape (B,) with values in {0, 1}
    """
    labels = labels.to(logits.dtype)
    n_pos = labels.sum()
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return F.binary_cross_entropy_with_logits(logits, labels)
    weight = n_pos / (n_pos + n_neg)
    return weight * F.binary_cross_entropy_with_logits(logits, labels, pos_weight=n_neg / n_pos)


def _group_means(values: torch.Tensor, groups: torch.Tensor, select: torch.Tensor, n_groups: int):
    """Per-group mean of ``values`` over the rows where ``select`` holds; and which groups have rows."""
    weights = select.to(values.dtype)
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(
        0, groups, values * weights
    )
    counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, groups, weights)
    present = counts > 0
    return sums[present] / counts[present]


def _gap(means: torch.Tensor) -> torch.Tensor:
    if means.numel() < 2:
        return means.new_zeros(())
    return means.max() - means.min()


def soft_rate_gaps(
    probs: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_groups: int | None = None
) -> dict[str, torch.Tensor]:
    """Max − min over groups of the soft TPR, FPR and selection rate (differentiable).

    A group that has no positives (negatives) in the batch is left out of the TPR (FPR) gap; with
    fewer than two groups left, that gap is 0.

    Parameters
    ----------
    probs : tensor (B,) of probabilities in [0, 1]
    labels : tensor (B,) of 0/1 labels
    groups : long tensor (B,) of group indices in ``[0, n_groups)``
    """
    groups = groups.long()
    k = int(n_groups if n_groups is not None else (int(groups.max()) + 1 if groups.numel() else 1))
    positive = labels > 0.5
    return {
        "tpr": _gap(_group_means(probs, groups, positive, k)),
        "fpr": _gap(_group_means(probs, groups, ~positive, k)),
        "sr": _gap(_group_means(probs, groups, torch.ones_like(positive), k)),
    }


def bias_loss_from_probs(
    probs: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    kind: str = "eodds",
    n_groups: int | None = None,
) -> torch.Tensor:
    """The bias loss ``B`` of probabilities: ``eodds``, ``eopp`` or ``dp`` (see the module docstring)."""
    if kind not in BIAS_LOSSES:
        raise ValueError(f"bias loss must be one of {BIAS_LOSSES}, got {kind!r}")
    gaps = soft_rate_gaps(probs, labels, groups, n_groups)
    if kind == "eodds":
        return 0.5 * (gaps["tpr"] + gaps["fpr"])
    if kind == "eopp":
        return gaps["tpr"]
    return gaps["sr"]


def bias_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    kind: str = "eodds",
    n_groups: int | None = None,
) -> torch.Tensor:
    """The bias loss ``B`` of logits (``p = sigmoid(logits)``)."""
    return bias_loss_from_probs(torch.sigmoid(logits), labels, groups, kind=kind, n_groups=n_groups)
