"""Distillation and group-robust losses: vanilla KD, Group DRO, and GroupDistil.

GroupDistil (Vilouras et al., "Group Distributionally Robust Knowledge Distillation", MLMI 2023,
arXiv 2311.00476) applies the online group re-weighting of Group DRO (Sagawa et al., "Distributionally
Robust Neural Networks for Group Shifts", ICLR 2020, arXiv 1911.08731) to the knowledge-distillation
loss of Hinton et al. ("Distilling the Knowledge in a Neural Network", arXiv 1503.02531):

- per sample: ``l_i = alpha * T**2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(y_i, z_s)``
- per group present in the batch: ``L_g`` = mean of ``l_i`` over the batch's samples of group ``g``
- group weights: ``q_g <- q_g * exp(eta * (L_g + C / sqrt(n_g)))``, then ``q <- q / sum(q)``
- loss: ``sum_g q_g L_g``

The weights are kept as ``log q`` and normalised with ``logsumexp``: the multiplicative update on
``q`` itself underflows to 0 (and then NaN) after a few hundred steps of large losses. A group that is
absent from a batch has no loss to learn from, so its weight is left unchanged and the present
groups share the rest of the mass (our design; with every group present the update is exactly the
rule above). Under data parallelism the per-group sums are all-reduced before the update so every
process keeps the same ``q``.

>>> import torch
>>> loss = GroupDistilLoss(n_groups=2)
>>> s, t = torch.zeros(4, 2), torch.zeros(4, 2)
>>> y, g = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
>>> value = loss(s, y, g, teacher_logits=t)
>>> [round(v, 4) for v in loss.group_weights.tolist()]
[0.5, 0.5]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trustmed.distill.config import LossConfig

__all__ = ["GroupDROLoss", "GroupDistilLoss", "KDLoss", "distillation_terms"]

_LOSS = LossConfig()  # the defaults of ``trustmed distill``


def distillation_terms(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Per-sample Hinton loss ``alpha*T^2*KL(p_t^T || p_s^T) + (1-alpha)*CE(y, z_s)``, shape ``(B,)``.

    With ``alpha == 0`` (or no teacher and ``alpha == 0``) this is the per-sample cross-entropy.
    """
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    if alpha == 0:
        return ce
    if teacher_logits is None:
        raise ValueError("a teacher's logits are needed when alpha > 0")
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


class KDLoss(nn.Module):
    """Vanilla knowledge distillation (Hinton et al., 2015): the per-sample loss averaged over the batch.

    Every sample weighs the same, so groups count in proportion to their size: method ``kd_sample``.
    Method ``kd`` (the baseline of GroupDistil's design) is :class:`GroupDistilLoss` with ``eta = 0``,
    where every group's mean loss counts the same.
    """

    def __init__(self, temperature: float = _LOSS.temperature, alpha: float = _LOSS.alpha):
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor | None = None,
        *,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        terms = distillation_terms(
            student_logits, labels, teacher_logits, temperature=self.temperature, alpha=self.alpha
        )
        return terms.mean()


class GroupDistilLoss(nn.Module):
    """GroupDistil: the distillation loss re-weighted online towards the worst groups.

    Parameters
    ----------
    n_groups : number of groups; group ids passed to :meth:`forward` are ``0 .. n_groups - 1``.
    temperature, alpha : the distillation temperature ``T`` and the weight ``alpha`` of the KL term.
    eta : step size of the exponentiated-gradient update of the group weights.
    adjustment : the generalisation adjustment ``C`` (added as ``C / sqrt(n_g)``); needs ``group_counts``.
    group_counts : training-set count of every group (``n_g``).

    Attributes
    ----------
    log_q : buffer of shape ``(n_groups,)``, the log group weights; saved by ``state_dict``.
    """

    def __init__(
        self,
        n_groups: int,
        temperature: float = _LOSS.temperature,
        alpha: float = _LOSS.alpha,
        eta: float = _LOSS.eta,
        adjustment: float = _LOSS.adjustment,
        *,
        group_counts: torch.Tensor | list[int] | None = None,
    ):
        super().__init__()
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if temperature <= 0 or not 0 <= alpha <= 1 or eta < 0:
            raise ValueError(
                f"need temperature > 0, 0 <= alpha <= 1, eta >= 0; got {temperature}, {alpha}, {eta}"
            )
        self.n_groups = int(n_groups)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.eta = float(eta)
        self.adjustment = float(adjustment)
        bonus = torch.zeros(n_groups)
        if adjustment:
            if group_counts is None or len(group_counts) != n_groups:
                raise ValueError("adjustment != 0 needs group_counts with one count per group")
            counts = torch.as_tensor(group_counts, dtype=torch.float32)
            bonus = adjustment / counts.clamp(min=1).sqrt()
        self.register_buffer("adjust", bonus)
        self.register_buffer("log_q", torch.full((n_groups,), -math.log(n_groups)))

    @property
    def group_weights(self) -> torch.Tensor:
        """The current group weights ``q`` (a distribution over groups), on the CPU."""
        return self.log_q.detach().exp().cpu()

    def per_sample(
        self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> torch.Tensor:
        return distillation_terms(
            student_logits, labels, teacher_logits, temperature=self.temperature, alpha=self.alpha
        )

    @torch.no_grad()
    def update(self, group_loss: torch.Tensor, counts: torch.Tensor) -> None:
        """One exponentiated-gradient step on ``log q`` for the groups with ``counts > 0``."""
        if self._distributed():
            stats = torch.stack([group_loss * counts, counts.to(group_loss.dtype)])
            torch.distributed.all_reduce(stats)
            counts = stats[1]
            group_loss = stats[0] / counts.clamp(min=1)
        absent = counts == 0
        step = group_loss * self.eta
        if self.adjustment:
            step = step + self.eta * self.adjust
        log_q = self.log_q
        stepped = log_q + step
        # log of the present groups' total mass before and after the step (a stable log-sum-exp of
        # both rows at once; torch.logsumexp's inf handling costs more than the rest of the loss)
        both = torch.stack((log_q, stepped)).masked_fill_(absent, -math.inf)
        top = both.amax(dim=1, keepdim=True)
        mass = (both - top).exp().sum(dim=1).log() + top.squeeze(1)
        self.log_q = torch.where(absent, log_q, stepped + (mass[0] - mass[1]))

    @staticmethod
    def _distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def forward(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor,
        *,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The robust loss ``sum_g q_g L_g``; in training mode ``q`` is updated first (as Group DRO does).

        Written as a per-sample weighted sum (weight ``q_g / n_g`` for a sample of group ``g``), which
        equals ``sum_g q_g L_g`` and keeps the backward pass as cheap as a plain mean.
        """
        if self.log_q.device != student_logits.device:
            self.to(student_logits.device)
        per_sample = self.per_sample(student_logits, labels, teacher_logits)
        with torch.no_grad():
            counts = torch.bincount(groups, minlength=self.n_groups)
            denom = counts.clamp(min=1).to(per_sample.dtype)
            if self.training:
                sums = torch.bincount(groups, weights=per_sample.detach(), minlength=self.n_groups)
                self.update(sums / denom, counts)
            weight = (self.log_q.exp() / denom)[groups]
        return torch.dot(weight, per_sample)


class GroupDROLoss(GroupDistilLoss):
    """Group DRO (Sagawa et al., 2020) on the cross-entropy: GroupDistil with ``alpha = 0``, no teacher."""

    def __init__(
        self,
        n_groups: int,
        eta: float = _LOSS.eta,
        adjustment: float = _LOSS.adjustment,
        *,
        group_counts: torch.Tensor | list[int] | None = None,
    ):
        super().__init__(
            n_groups, temperature=1.0, alpha=0.0, eta=eta, adjustment=adjustment, group_counts=group_counts
        )
