"""Fine-tuning baselines of post-hoc debiasing: ``finetune`` and ``finetune_fair``.

:class:`FineTune` is the simplest baseline on the external set: full fine-tuning on the external
set balanced within each label by group (as SWiFT, "Soft-Mask Weight Fine-tuning for Bias
Mitigation", MELBA 2025, arXiv 2508.18826, balances it), with the weighted BCE (``finetune``), or
with ``WBCE + λ·B`` where ``B`` is the bias loss (``finetune_fair``).
"""

from __future__ import annotations

import copy
import time

from torch import nn

from trustmed.debias.base import (
    Cost,
    DebiasEstimator,
    combined_loss,
    make_optimizer,
    require_binary_classifier,
)
from trustmed.debias.data import GroupedSet, balanced_indices, check_external_set
from trustmed.models import merge_output
from trustmed.train import fit
from trustmed.utils import seed_everything

__all__ = ["FineTune"]


class FineTune(DebiasEstimator):
    """Full fine-tuning on the balanced external set: ``finetune`` (WBCE) or ``finetune_fair`` (WBCE + λ·B).

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational; groups come with the set).
    fair : add the bias loss ``λ·B`` to the weighted BCE.
    bias_loss : ``"eodds"``, ``"eopp"`` or ``"dp"``.
    lam : weight λ of the bias loss when ``fair``.
    lr, epochs, batch_size, optimizer, weight_decay : the fine-tuning schedule; the default 20
        epochs are those of SWiFT's two steps together, so that both get the same budget.
    seed : seeds balancing, shuffling and initialisation.

    Attributes
    ----------
    model_ : the fine-tuned copy of the model.
    history_ : per-epoch training losses.
    n_balanced_ : size of the balanced external set.
    cost_ : :class:`~trustmed.debias.base.Cost` as a dict.

    Examples
    --------
    >>> import torch
    >>> from trustmed.models import ModelSpec, build_model
    >>> _ = torch.manual_seed(0)
    >>> model = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=2))
    >>> data = GroupedSet(torch.randn(16, 3, 8, 8), [0, 1] * 8, ["a"] * 8 + ["b"] * 8)
    >>> tuned = FineTune(epochs=1).fit(model, data)
    >>> tuned.cost_["epochs"]
    1
    """

    def __init__(
        self,
        attribute: str | None = None,
        *,
        fair: bool = False,
        bias_loss: str = "eodds",
        lam: float = 1.0,
        lr: float = 1e-4,
        epochs: int = 20,
        batch_size: int = 64,
        optimizer: str = "sgd",
        weight_decay: float = 5e-4,
        seed: int = 0,
    ):
        self.attribute = attribute
        self.fair = fair
        self.bias_loss = bias_loss
        self.lam = lam
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.seed = seed

    def fit(self, model: nn.Module, external_set: GroupedSet) -> FineTune:
        """Fine-tune a copy of ``model`` on the balanced ``external_set``."""
        source = model
        model = require_binary_classifier(model)
        check_external_set(external_set)
        start = time.perf_counter()
        seed_everything(self.seed)
        model = copy.deepcopy(model)
        for p in model.parameters():
            p.requires_grad_(True)
        balanced = balanced_indices(external_set.labels, external_set.groups, seed=self.seed)
        loader = external_set.loader(self.batch_size, shuffle=True, seed=self.seed, indices=balanced)
        loss_fn = combined_loss(
            1.0, self.lam if self.fair else 0.0, kind=self.bias_loss, n_groups=len(external_set.group_names)
        )
        optimizer = make_optimizer(
            model.parameters(), self.optimizer, self.lr, weight_decay=self.weight_decay
        )
        result = fit(model, optimizer, loader, loss_fn, epochs=self.epochs, description="fine-tune")
        cost = Cost()
        cost.add(result)
        cost.wall_time_s = time.perf_counter() - start
        self.model_ = merge_output(source, model)
        self.history_ = result.history
        self.n_balanced_ = len(balanced)
        self.cost_ = cost.as_dict()
        return self
