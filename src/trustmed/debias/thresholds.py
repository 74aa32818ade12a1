"""Per-group thresholds (``group_thresholds``): a sanity baseline of post-hoc debiasing.

:class:`GroupThresholds` keeps the model and picks a decision threshold per group with fairlearn's
``ThresholdOptimizer`` (Hardt, Price and Srebro, "Equality of Opportunity in Supervised Learning",
NeurIPS 2016, arXiv 1610.02413), fit on the external set. It needs the sensitive attribute **at
prediction time** (``needs_attribute_at_prediction = True``), which most deployments cannot or may
not use; it is flagged as such in every table. Its outputs are (randomised, seeded) decisions, so
its "scores" are 0/1. The fitted thresholds are saved as plain JSON (:meth:`GroupThresholds.save`)
and applied to any predictions table without fairlearn (:func:`apply_thresholds`).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> groups = rng.choice(["a", "b"], 400); labels = rng.integers(0, 2, 400)
>>> scores = np.clip(0.4 * labels + 0.4 * rng.random(400) + 0.2 * (groups == "a"), 0, 1)
>>> gt = GroupThresholds().fit_scores(scores, labels, groups)
>>> set(np.unique(gt.decide(scores, groups)).tolist()) <= {0.0, 1.0}
True
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from trustmed.debias.base import DebiasEstimator, require_binary_classifier
from trustmed.debias.data import GroupedSet, check_external_set, predict_proba
from trustmed.errors import InputError

__all__ = ["GroupThresholds", "apply_thresholds"]


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


class GroupThresholds(DebiasEstimator):
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

    def fit(self, model: nn.Module, external_set: GroupedSet) -> GroupThresholds:
        """Fit per-group thresholds to ``model``'s scores on ``external_set``; ``model_`` is ``model``."""
        require_binary_classifier(model)
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

    def write_outputs(self, folder: Path) -> dict[str, Any]:
        """``group_thresholds.json`` (the model is unchanged: the thresholds are the method's output)."""
        return {"thresholds_file": self.save(Path(folder) / "group_thresholds.json").name}


def apply_thresholds(
    rules: GroupThresholds,
    predictions: pd.DataFrame,
    *,
    attribute: str | None = None,
    what: str = "predictions",
) -> pd.DataFrame:
    """``predictions`` (a ``score`` column and the attribute's) with ``p_decision`` (P(1) under the
    per-group thresholds) and ``decision`` (a seeded 0/1 draw) added.

    ``attribute`` defaults to the one stored with the thresholds. A missing column, a missing or
    non-numeric score or attribute value, or a group the thresholds have not seen is an
    :class:`InputError` naming ``what``.
    """
    attribute = attribute or rules.attribute
    if not attribute:
        raise InputError(f"{what}: no attribute given, and the thresholds store none (--attribute)")
    for column in ("score", attribute):
        if column not in predictions.columns:
            raise InputError(
                f"{what}: column {column!r} not found; available: {', '.join(map(str, predictions.columns))}"
            )
    scores = pd.to_numeric(predictions["score"], errors="coerce")
    bad = scores.isna() | predictions[attribute].isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise InputError(f"{what}: row {row + 2}: score or {attribute!r} is missing or not a number")
    groups = predictions[attribute].astype(str).to_numpy()
    return predictions.assign(
        p_decision=rules.probability(scores.to_numpy(), groups),
        decision=rules.decide(scores.to_numpy(), groups).astype(int),
    )
