"""FairPrune: fairness through pruning, a baseline of post-hoc debiasing.

Implements "FairPrune: Achieving Fairness Through Pruning for Dermatological Disease Diagnosis"
(Wu et al., MICCAI 2022, arXiv 2203.02110). The importance of a weight for a group is the
diagonal Fisher ``h_g`` of the cross-entropy on that group's samples of the external set (an
approximation of the Hessian diagonal), and its saliency is

``S = ½ θ² (h_unpriv − β h_priv)``,

with the unprivileged group the one with the lower AUC on the external set (the lowest of K
groups) and the privileged one the highest. Weights of low saliency matter little to the
unprivileged group's loss and much to the privileged group's; the ``k`` % of weights (convolution
and linear weight tensors, ranked together) with the **smallest** saliency are set to zero, in one
shot (our reading of "prune by saliency", following Optimal Brain Damage, which removes the
least salient weights). ``k`` and ``β`` are chosen on validation by the comparison.

>>> import torch
>>> from trustmed.debias.data import GroupedSet
>>> from trustmed.models import ModelSpec, build_model
>>> _ = torch.manual_seed(0)
>>> model = build_model(ModelSpec(arch="tiny_cnn", image_size=8, width=2))
>>> data = GroupedSet(torch.randn(32, 3, 8, 8), [0, 1] * 16, ["light"] * 16 + ["dark"] * 16)
>>> pruned = FairPrune(prune_ratio=0.1).fit(model, data)
>>> round(pruned.history_["pruned_fraction"], 2)
0.1
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trustmed.debias.base import DebiasEstimator, require_binary_classifier
from trustmed.debias.data import GroupedSet, check_external_set, predict_proba
from trustmed.debias.importance import fisher_importance
from trustmed.debias.swift import worst_best_groups
from trustmed.errors import InputError
from trustmed.models import merge_output
from trustmed.utils import seed_everything

__all__ = ["FairPrune"]


def _bce_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y, _ = (t.to(next(model.parameters()).device) for t in batch)
    return F.binary_cross_entropy_with_logits(model(x), y.float())


class FairPrune(DebiasEstimator):
    """Prune the weights that help the privileged group more than the unprivileged one.

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational).
    prune_ratio : fraction ``k`` of the weights to set to zero, in (0, 1).
    beta : weight ``β`` of the privileged group's importance in the saliency.
    batch_size : batch size of the Fisher computation.
    seed : seeds the computation.

    Attributes
    ----------
    model_ : the pruned copy of the model.
    mask_ : dict of 0/1 tensors per pruned-able weight (0 = pruned).
    saliency_ : dict of saliency tensors.
    history_ : the unprivileged / privileged groups and the pruned fraction.
    cost_ : wall time, epochs (0), samples seen, parameter updates (number of weights pruned).
    """

    def __init__(
        self,
        attribute: str | None = None,
        *,
        prune_ratio: float = 0.05,
        beta: float = 0.5,
        batch_size: int = 64,
        seed: int = 0,
    ):
        self.attribute = attribute
        self.prune_ratio = prune_ratio
        self.beta = beta
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, model: nn.Module, external_set: GroupedSet) -> FairPrune:
        """Prune a copy of ``model`` using the groups of ``external_set``."""
        if not 0.0 < self.prune_ratio < 1.0:
            raise InputError(f"prune_ratio must lie in (0, 1), got {self.prune_ratio}")
        source = model
        model = require_binary_classifier(model)
        check_external_set(external_set)
        start = time.perf_counter()
        seed_everything(self.seed)
        model = copy.deepcopy(model)
        unpriv, priv = worst_best_groups(predict_proba(model, external_set), external_set)
        names = [n for n, p in model.named_parameters() if p.ndim >= 2]
        fisher = {}
        for group in (unpriv, priv):
            rows = np.flatnonzero(external_set.groups == group)
            batches = list(external_set.loader(self.batch_size, indices=rows))
            fisher[group] = fisher_importance(model, batches, _bce_loss, names=names)
        params = dict(model.named_parameters())
        self.saliency_ = {
            n: 0.5 * params[n].detach().float().cpu() ** 2 * (fisher[unpriv][n] - self.beta * fisher[priv][n])
            for n in names
        }
        flat = torch.cat([s.flatten() for s in self.saliency_.values()])
        n_prune = int(round(self.prune_ratio * flat.numel()))
        keep_flat = torch.ones_like(flat)
        keep_flat[torch.argsort(flat, stable=True)[:n_prune]] = 0.0
        self.mask_ = {}
        offset = 0
        with torch.no_grad():
            for n in names:
                size = self.saliency_[n].numel()
                keep = keep_flat[offset : offset + size].view_as(self.saliency_[n])
                offset += size
                self.mask_[n] = keep
                params[n].mul_(keep.to(params[n].device, params[n].dtype))
        model.eval()
        self.model_ = merge_output(source, model)
        self.history_ = {
            "unprivileged": unpriv,
            "privileged": priv,
            "pruned_fraction": n_prune / flat.numel(),
            "n_weights": int(flat.numel()),
        }
        self.cost_ = {
            "wall_time_s": time.perf_counter() - start,
            "epochs": 0,
            "samples_seen": int(np.isin(external_set.groups, [unpriv, priv]).sum()),
            "parameter_updates": n_prune,
        }
        return self
