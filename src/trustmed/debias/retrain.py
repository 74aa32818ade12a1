"""Fair retraining (``retrain_fair``): the costly reference point of post-hoc debiasing.

:class:`RetrainFair` trains the same architecture from scratch on the full training set with
``WBCE + λ·B`` — the weighted BCE and the soft fairness gap of SWiFT ("Soft-Mask Weight Fine-tuning
for Bias Mitigation", MELBA 2025, arXiv 2508.18826) — on the schedule of the ERM model
(:meth:`RetrainFair.from_train_config`); without one, on the defaults of ``trustmed train``
(:class:`~trustmed.train.classifier.TrainConfig`). It is the route that post-hoc methods are meant
to avoid, so its cost is the yardstick of theirs.

>>> from trustmed.train.classifier import OptimSection
>>> RetrainFair().lr == OptimSection().lr
True
>>> RetrainFair.from_train_config({"optim": {"epochs": 3}}, lam=2.0).get_params()["epochs"]
3
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from trustmed.debias.base import DebiasEstimator, combined_loss, make_optimizer, require_binary_classifier
from trustmed.debias.data import GroupedSet, check_external_set, predict_proba
from trustmed.models import merge_output
from trustmed.train import fit
from trustmed.train.classifier import DataSection, OptimSection
from trustmed.utils import seed_everything

__all__ = ["RetrainFair", "reinitialise"]

_OPTIM, _DATA = OptimSection(), DataSection()


def reinitialise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Reset every submodule that has ``reset_parameters`` (seeded): the same architecture, untrained."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return model


def _augment(images: torch.Tensor) -> torch.Tensor:
    """Random flips and 90° rotations per image (the augmentation of ERM training)."""
    out = images.clone()
    n = images.shape[0]
    flip_h = torch.rand(n) < 0.5
    flip_v = torch.rand(n) < 0.5
    turns = torch.randint(0, 4, (n,))
    out[flip_h] = out[flip_h].flip(-1)
    out[flip_v] = out[flip_v].flip(-2)
    for k in (1, 2, 3):
        rows = turns == k
        out[rows] = torch.rot90(out[rows], k, dims=(-2, -1))
    return out


class RetrainFair(DebiasEstimator):
    """Train the architecture of ``model`` from scratch with ``WBCE + λ·B`` on the training set.

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational).
    bias_loss : ``"eodds"``, ``"eopp"`` or ``"dp"``.
    lam : weight λ of the bias loss.
    epochs, lr, optimizer, batch_size, weight_decay, momentum, cosine, augment : the schedule;
        the defaults are those of ``trustmed train`` (``OptimSection``, ``DataSection``) and
        :meth:`from_train_config` copies an ERM run's.
    seed : seeds initialisation, shuffling and augmentation.
    init_weights, model_spec : a pretrained start, as ERM had (``model.init_weights`` of the ERM
        run's spec, :func:`trustmed.models.load_weights`); random initialisation without.

    With a ``val_set``, the epoch with the best validation AUC is kept (as ERM training does).
    """

    def __init__(
        self,
        attribute: str | None = None,
        *,
        bias_loss: str = "eodds",
        lam: float = 1.0,
        epochs: int = _OPTIM.epochs,
        lr: float = _OPTIM.lr,
        optimizer: str = _OPTIM.name,
        batch_size: int = _DATA.batch_size,
        weight_decay: float = _OPTIM.weight_decay,
        momentum: float = _OPTIM.momentum,
        cosine: bool = _OPTIM.cosine,
        augment: bool = _DATA.augment,
        seed: int = 0,
        init_weights: str | None = None,
        model_spec: dict[str, Any] | None = None,
    ):
        self.attribute = attribute
        self.bias_loss = bias_loss
        self.lam = lam
        self.epochs = epochs
        self.lr = lr
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.cosine = cosine
        self.augment = augment
        self.seed = seed
        self.init_weights = init_weights
        self.model_spec = model_spec

    @classmethod
    def from_train_config(cls, train_config: Mapping[str, Any], **params: Any) -> RetrainFair:
        """The schedule of an ERM run, from its ``TrainConfig`` as a dict (``model.json``'s ``config``);
        keys it lacks keep ``trustmed train``'s defaults, and ``params`` override."""
        optim, data = train_config.get("optim") or {}, train_config.get("data") or {}
        schedule = {
            "epochs": optim.get("epochs", _OPTIM.epochs),
            "lr": optim.get("lr", _OPTIM.lr),
            "optimizer": optim.get("name", _OPTIM.name),
            "weight_decay": optim.get("weight_decay", _OPTIM.weight_decay),
            "momentum": optim.get("momentum", _OPTIM.momentum),
            "cosine": optim.get("cosine", _OPTIM.cosine),
            "batch_size": data.get("batch_size", _DATA.batch_size),
            "augment": data.get("augment", _DATA.augment),
            "seed": train_config.get("seed", 0),
        }
        spec = train_config.get("model") or {}
        if spec.get("init_weights"):
            schedule.update(init_weights=str(spec["init_weights"]), model_spec=dict(spec))
        return cls(**{**schedule, **params})

    def fit(self, model: nn.Module, train_set: GroupedSet, val_set: GroupedSet | None = None) -> RetrainFair:
        """Train a re-initialised copy of ``model`` on ``train_set``."""
        source = model
        require_binary_classifier(model)
        check_external_set(train_set, "training set")
        start = time.perf_counter()
        seed_everything(self.seed)
        model = reinitialise(copy.deepcopy(source), self.seed)
        if self.init_weights is not None:
            from trustmed.models import ModelSpec, load_weights

            load_weights(model, self.init_weights, ModelSpec(**(self.model_spec or {})), strict=False)
        model = require_binary_classifier(model)
        for p in model.parameters():
            p.requires_grad_(True)
        loader = train_set.loader(self.batch_size, shuffle=True, seed=self.seed)
        base_loss = combined_loss(1.0, self.lam, kind=self.bias_loss, n_groups=len(train_set.group_names))

        def loss_fn(m: nn.Module, batch) -> torch.Tensor:
            x, y, g = batch
            return base_loss(m, (_augment(x) if self.augment else x, y, g))

        optimizer = make_optimizer(
            model.parameters(),
            self.optimizer,
            self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
        )
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs) if self.cosine else None
        )
        evaluate = None
        if val_set is not None:

            def evaluate(m: nn.Module) -> dict[str, float]:
                return {"val_auc": float(roc_auc_score(val_set.labels, predict_proba(m, val_set)))}

        result = fit(
            model,
            optimizer,
            loader,
            loss_fn,
            epochs=self.epochs,
            evaluate=evaluate,
            scheduler=scheduler,
            select="val_auc" if val_set is not None else None,
            description="retrain (fair)",
        )
        model.eval()
        self.model_ = merge_output(source, model)
        self.history_ = result.history
        self.cost_ = {
            "wall_time_s": time.perf_counter() - start,
            "epochs": result.epochs,
            "samples_seen": result.samples_seen,
            "parameter_updates": result.parameter_updates,
        }
        return self
