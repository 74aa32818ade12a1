"""Two reference points for post-hoc debiasing: fair retraining and per-group thresholds.

* :class:`RetrainFair` (``retrain_fair``) trains the same architecture from scratch on the full
  training set with ``WBCE + λ·B`` — the weighted BCE and the soft fairness gap of SWiFT
  ("Soft-Mask Weight Fine-tuning for Bias Mitigation", MELBA 2025, arXiv 2508.18826) — on the same
  schedule as the ERM model. It is the costly route that post-hoc methods are meant to avoid.
* :class:`GroupThresholds` (``group_thresholds``) keeps the model and picks a decision threshold
  per group with fairlearn's ``ThresholdOptimizer`` (Hardt, Price and Srebro, "Equality of
  Opportunity in Supervised Learning", NeurIPS 2016, arXiv 1610.02413). It needs the sensitive
  attribute **at prediction time** (``needs_attribute_at_prediction = True``), which most
  deployments cannot or may not use; it is a sanity baseline, flagged as such in every table. Its
  outputs are (randomised, seeded) decisions, so its "scores" are 0/1.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> groups = rng.choice(["a", "b"], 400); labels = rng.integers(0, 2, 400)
>>> scores = np.clip(0.4 * labels + 0.4 * rng.random(400) + 0.2 * (groups == "a"), 0, 1)
>>> gt = GroupThresholds().fit_scores(scores, labels, groups)
>>> set(np.unique(gt.decide(scores, groups)).tolist()) <= {0.0, 1.0}
True
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score
from torch import nn

from trustmed.debias.finetune import (
    GroupedSet,
    check_external_set,
    combined_loss,
    make_optimizer,
    predict_proba,
)
from trustmed.debias.swift import _binary_head
from trustmed.errors import InputError
from trustmed.train import fit
from trustmed.utils import seed_everything

__all__ = ["RetrainFair", "GroupThresholds", "reinitialise"]


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


class RetrainFair:
    """Train the architecture of ``model`` from scratch with ``WBCE + λ·B`` on the training set.

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational).
    bias_loss : ``"eodds"``, ``"eopp"`` or ``"dp"``.
    lam : weight λ of the bias loss.
    epochs, lr, optimizer, batch_size, weight_decay, momentum, cosine, augment : the schedule;
        :meth:`from_train_config` copies the ERM model's.
    seed : seeds initialisation, shuffling and augmentation.

    With a ``val_set``, the epoch with the best validation AUC is kept (as ERM training does).
    """

    def __init__(
        self,
        attribute: str | None = None,
        *,
        bias_loss: str = "eodds",
        lam: float = 1.0,
        epochs: int = 10,
        lr: float = 1e-3,
        optimizer: str = "adam",
        batch_size: int = 64,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        cosine: bool = False,
        augment: bool = False,
        seed: int = 0,
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

    @classmethod
    def from_train_config(cls, train_config: dict, **kwargs) -> RetrainFair:
        """The schedule of an ERM run, from its ``TrainConfig`` as a dict (``model.json``'s ``config``)."""
        optim = train_config.get("optim", {})
        data = train_config.get("data", {})
        schedule = {
            "epochs": optim.get("epochs", 10),
            "lr": optim.get("lr", 1e-3),
            "optimizer": optim.get("name", "adam"),
            "weight_decay": optim.get("weight_decay", 0.0),
            "momentum": optim.get("momentum", 0.9),
            "cosine": optim.get("cosine", False),
            "batch_size": data.get("batch_size", 64),
            "augment": data.get("augment", False),
            "seed": train_config.get("seed", 0),
        }
        schedule.update(kwargs)
        return cls(**schedule)

    def fit(self, model: nn.Module, train_set: GroupedSet, val_set: GroupedSet | None = None) -> RetrainFair:
        """Train a re-initialised copy of ``model`` on ``train_set``."""
        _binary_head(model)
        check_external_set(train_set, "training set")
        start = time.perf_counter()
        seed_everything(self.seed)
        model = reinitialise(copy.deepcopy(model), self.seed)
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
        self.model_ = model
        self.history_ = result.history
        self.cost_ = {
            "wall_time_s": time.perf_counter() - start,
            "epochs": result.epochs,
            "samples_seen": result.samples_seen,
            "parameter_updates": result.parameter_updates,
        }
        return self


class _ScorePassthrough(ClassifierMixin, BaseEstimator):
    """A fitted "estimator" whose probability of class 1 is its single input column (a score)."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict(self, X):
        return (np.asarray(X)[:, 0] >= 0.5).astype(int)

    def predict_proba(self, X):
        score = np.asarray(X, dtype=float)[:, 0]
        return np.c_[1.0 - score, score]


def _plain_rule(rule) -> dict:
    """One group's interpolated thresholds as plain numbers; operations are fairlearn
    ``ThresholdOperation`` objects or ``[operator, threshold]`` pairs (as read back from JSON)."""

    def operation(op) -> list:
        if isinstance(op, (list, tuple)):
            return [str(op[0]), float(op[1])]
        return [op.operator, float(op.threshold)]

    return {
        "p0": float(rule["p0"]),
        "operation0": operation(rule["operation0"]),
        "p1": float(rule["p1"]),
        "operation1": operation(rule["operation1"]),
        "p_ignore": float(rule.get("p_ignore", 0.0)),
        "prediction_constant": float(rule.get("prediction_constant", 0.0)),
    }


def _threshold(operation: list, x: np.ndarray) -> np.ndarray:
    op, threshold = operation
    return (x > threshold) if op == ">" else (x < threshold)


class GroupThresholds:
    """Per-group thresholds on a model's scores (fairlearn ``ThresholdOptimizer``), fit on the external set.

    Parameters
    ----------
    attribute : name of the sensitive attribute (informational).
    constraints : fairlearn constraint, e.g. ``"equalized_odds"``, ``"true_positive_rate_parity"``,
        ``"demographic_parity"``.
    objective : what fairlearn maximises under the constraint.
    seed : seeds the randomised decisions.
    """

    needs_attribute_at_prediction = True

    def __init__(
        self,
        attribute: str | None = None,
        *,
        constraints: str = "equalized_odds",
        objective: str = "balanced_accuracy_score",
        seed: int = 0,
    ):
        self.attribute = attribute
        self.constraints = constraints
        self.objective = objective
        self.seed = seed

    def fit(
        self, model: nn.Module, external_set: GroupedSet, val_set: GroupedSet | None = None
    ) -> GroupThresholds:
        """Fit per-group thresholds to ``model``'s scores on ``external_set``; ``model_`` is ``model``."""
        check_external_set(external_set)
        start = time.perf_counter()
        self.model_ = model
        self.fit_scores(predict_proba(model, external_set), external_set.labels, external_set.groups)
        self.cost_ = {
            "wall_time_s": time.perf_counter() - start,
            "epochs": 0,
            "samples_seen": len(external_set),
            "parameter_updates": 0,
        }
        return self

    def fit_scores(self, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> GroupThresholds:
        """Fit on precomputed scores."""
        from fairlearn.postprocessing import ThresholdOptimizer

        scores = np.asarray(scores, dtype=float).reshape(-1, 1)
        labels = np.asarray(labels).astype(int)
        self.optimizer_ = ThresholdOptimizer(
            estimator=_ScorePassthrough().fit(scores, labels),
            constraints=self.constraints,
            objective=self.objective,
            predict_method="predict_proba",
            prefit=True,
        ).fit(scores, labels, sensitive_features=np.asarray(groups).astype(str))
        self.groups_ = sorted(set(np.asarray(groups).astype(str).tolist()))
        return self

    def _check_groups(self, groups: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups).astype(str)
        unseen = sorted(set(groups.tolist()) - set(self.groups_))
        if unseen:
            raise InputError(
                f"group_thresholds: groups {unseen} were not in the external set ({self.groups_})"
            )
        return groups

    @property
    def rules_(self) -> dict[str, dict]:
        """Per group: with probability ``p0`` decide by ``operation0`` (``[">" or "<", threshold]``),
        else by ``operation1``; the result is replaced by ``prediction_constant`` with probability
        ``p_ignore`` (fairlearn's interpolated thresholds, as plain numbers)."""
        if hasattr(self, "_rules"):
            return self._rules
        fitted = self.optimizer_.interpolated_thresholder_.interpolation_dict
        return {str(group): _plain_rule(rule) for group, rule in fitted.items()}

    def probability(self, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """P(decision = 1) for each sample under the randomised per-group thresholds."""
        groups = self._check_groups(groups)
        scores = np.asarray(scores, dtype=float).reshape(-1)
        out = np.zeros(len(scores))
        for group, rule in self.rules_.items():
            at = groups == group
            p = rule["p0"] * _threshold(rule["operation0"], scores[at]) + rule["p1"] * _threshold(
                rule["operation1"], scores[at]
            )
            out[at] = rule["p_ignore"] * rule["prediction_constant"] + (1 - rule["p_ignore"]) * p
        return out

    def decide(self, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """0/1 decisions for ``scores`` of samples in ``groups`` (groups unseen in ``fit`` are an error)."""
        groups = self._check_groups(groups)
        if not hasattr(self, "optimizer_"):  # loaded from a file: draw from the same probabilities
            p = self.probability(scores, groups)
            return (np.random.default_rng(self.seed).random(len(p)) < p).astype(float)
        scores = np.asarray(scores, dtype=float).reshape(-1, 1)
        return self.optimizer_.predict(scores, sensitive_features=groups, random_state=self.seed).astype(
            float
        )

    def save(self, path: str | Path) -> Path:
        """Write the fitted thresholds as JSON (readable by :meth:`load`, no fairlearn needed)."""
        from trustmed.io import write_json

        payload = {
            "method": "group_thresholds",
            "attribute": self.attribute,
            "constraints": self.constraints,
            "objective": self.objective,
            "seed": self.seed,
            "groups": list(self.groups_),
            # a threshold of ±inf (always / never) is written as the string "inf" / "-inf"
            "rules": {
                g: {
                    **r,
                    **{
                        k: [r[k][0], r[k][1] if np.isfinite(r[k][1]) else str(r[k][1])]
                        for k in ("operation0", "operation1")
                    },
                }
                for g, r in self.rules_.items()
            },
        }
        write_json(Path(path), payload)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> GroupThresholds:
        """Read thresholds written by :meth:`save`; ``decide`` and ``probability`` work on any scores."""
        from trustmed.io import read_json

        path = Path(path)
        payload = read_json(path, what="group thresholds file")
        try:
            rules = payload["rules"]
            out = cls(
                payload.get("attribute"),
                constraints=payload["constraints"],
                objective=payload["objective"],
                seed=int(payload.get("seed", 0)),
            )
            out._rules = {str(g): _plain_rule(r) for g, r in rules.items()}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise InputError(f"{path}: not a group thresholds file ({type(err).__name__}: {err})") from None
        for g, r in out._rules.items():
            ops = {r["operation0"][0], r["operation1"][0]}
            if not ops <= {">", "<"} or not np.isclose(r["p0"] + r["p1"], 1.0):
                raise InputError(f"{path}: group {g!r}: operators must be '>' or '<' and p0 + p1 = 1")
        out.groups_ = sorted(out._rules)
        return out

    def predict_scores(self, data: GroupedSet) -> np.ndarray:
        """Decisions (as 0/1 scores) on ``data``; uses its groups."""
        return self.decide(predict_proba(self.model_, data), data.groups)
