"""What every post-hoc debiasing method is, and the pieces their ``fit`` methods share.

A method is a scikit-learn estimator (:class:`DebiasEstimator`, a
:class:`sklearn.base.BaseEstimator`: ``get_params``, ``set_params`` and ``clone`` work): its
configuration is set in ``__init__``; ``fit(model, external_set)`` takes a trained binary
classifier (``extractor`` + linear ``head``, :mod:`trustmed.models`) and a
:class:`~trustmed.debias.data.GroupedSet`, leaves the input model untouched and sets ``model_``
(the debiased copy) and ``cost_`` (wall time, epochs, samples seen, trainable-parameter updates).
A method that fits on the training split instead (``RetrainFair``) also takes a validation set.

>>> from sklearn.base import clone
>>> from trustmed.debias import SWiFT
>>> clone(SWiFT(beta=0.2)).set_params(lr_forget=1e-3).get_params()["beta"]
0.2
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from trustmed.debias.data import GroupedSet, predict_proba
from trustmed.debias.losses import BIAS_LOSSES, bias_loss, wbce
from trustmed.errors import InputError
from trustmed.train import FitResult

__all__ = ["Cost", "DebiasEstimator", "combined_loss", "make_optimizer", "require_binary_classifier"]


class DebiasEstimator(BaseEstimator):
    """Base class of the debiasing methods (see the module docstring).

    ``needs_attribute_at_prediction`` is true for a method whose predictions need each sample's
    group (per-group thresholds); tables flag such methods.
    """

    needs_attribute_at_prediction = False

    def fit(self, model: nn.Module, external_set: GroupedSet) -> DebiasEstimator:
        raise NotImplementedError

    def predict_scores(self, data: GroupedSet) -> np.ndarray:
        """Scores of the fitted method on ``data``: the debiased model's probabilities."""
        return predict_proba(self.model_, data)

    def write_outputs(self, folder: Path) -> dict[str, Any]:
        """Write what the fitted method needs at prediction time besides the debiased checkpoint.

        Returns entries for the run summary (``debias.json``) naming the files; nothing by default.
        """
        return {}


def require_binary_classifier(model: nn.Module) -> nn.Module:
    """The binary classifier a method works on (:func:`trustmed.models.binary_view`).

    ``model`` must have an ``extractor`` and a linear ``head`` (:func:`trustmed.models.wrap` makes
    any torch classifier so) with one output, or several and an ``output_index``; otherwise an
    :class:`InputError` says what to do. Methods put their result back with
    :func:`trustmed.models.merge_output`, so a multi-output model keeps its other outputs.
    """
    from trustmed.models import binary_view

    return binary_view(model)


def make_optimizer(
    params, name: str = "sgd", lr: float = 1e-4, *, weight_decay: float = 5e-4, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """SGD with momentum (SWiFT's choice for skin images) or Adam (its choice for chest X-rays)."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise InputError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


def combined_loss(
    pred_weight: float, bias_weight: float, *, kind: str = "eodds", n_groups: int | None = None
) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn(model, (x, y, g)) = pred_weight · WBCE + bias_weight · B``."""
    if kind not in BIAS_LOSSES:
        raise InputError(f"bias_loss must be one of {BIAS_LOSSES}, got {kind!r}")

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        device = next(model.parameters()).device
        x, y, g = (t.to(device) for t in batch)
        logits = model(x)
        loss = logits.new_zeros(())
        if pred_weight:
            loss = loss + pred_weight * wbce(logits, y)
        if bias_weight:
            loss = loss + bias_weight * bias_loss(logits, y, g, kind=kind, n_groups=n_groups)
        return loss

    return loss_fn


@dataclass
class Cost:
    """What a method spent: wall time, epochs, samples seen, trainable-parameter updates."""

    wall_time_s: float = 0.0
    epochs: int = 0
    samples_seen: int = 0
    parameter_updates: int = 0

    def add(self, result: FitResult) -> None:
        self.epochs += result.epochs
        self.samples_seen += result.samples_seen
        self.parameter_updates += result.parameter_updates

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_time_s": self.wall_time_s,
            "epochs": self.epochs,
            "samples_seen": self.samples_seen,
            "parameter_updates": self.parameter_updates,
        }
