"""The debiasing methods, registered once: the CLI, the comparison, the demo and the benchmark read this.

Each :class:`Method` names its estimator class (a :class:`~trustmed.debias.base.DebiasEstimator`),
its validation grids (the settings :func:`~trustmed.debias.selection.compare_methods` chooses among,
full and quick), the split it fits on (the small ``external`` set, or the ``train`` split with
``val`` to pick the best epoch), and the parameters it fixes (the ablations ``swift_nomask`` and
``swift_step1_only`` are SWiFT with one parameter fixed, run with SWiFT's chosen setting). Whether a
method needs the attribute at prediction time is its estimator's ``needs_attribute_at_prediction``.

Adding a baseline takes one new file (its estimator) and one :func:`register` call (or one entry
in :data:`METHODS` below).

>>> get_method("swift_nomask").build(epochs=3).get_params()["use_mask"]
False
>>> get_method("finetune").build(epochs=3).get_params()["epochs"]
6
>>> get_method("swift").build({"lr_forgett": 1e-3})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
trustmed.errors.InputError: params: unknown parameter 'lr_forgett' of method 'swift'; valid: batch_size, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sklearn.base import clone
from torch import nn

from trustmed.debias.base import DebiasEstimator
from trustmed.debias.bmft import BMFT
from trustmed.debias.data import GroupedSet
from trustmed.debias.fairprune import FairPrune
from trustmed.debias.finetune import FineTune
from trustmed.debias.retrain import RetrainFair
from trustmed.debias.swift import SWiFT
from trustmed.debias.thresholds import GroupThresholds
from trustmed.errors import InputError

__all__ = ["METHODS", "SET_BY_RUN", "Method", "check_settings", "get_method", "method_names", "register"]

SET_BY_RUN = ("attribute", "seed", "bias_loss")
"""Estimator parameters a run sets for every method (``attribute``, ``seed``, ``bias_loss``); not
settable per method."""

Settings = tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Method:
    """One debiasing method of the registry.

    Parameters
    ----------
    name : the name used by ``--method``, ``methods`` and the tables.
    estimator : the :class:`~trustmed.debias.base.DebiasEstimator` subclass.
    grid : settings (parameter → value) tried on validation by the comparison.
    quick_grid : the smaller grid of ``quick`` comparisons (default: ``grid``).
    fit_on : ``"external"`` (the external set) or ``"train"`` (the training split, with ``val`` for
        choosing the epoch).
    fixed : parameters the method fixes (an ablation's switch); not settable.
    epochs : parameter → multiple of a run's ``epochs`` (the epochs of one fine-tuning step).
    ablation_of : the method whose chosen setting an ablation reuses (it has no grid of its own).
    """

    name: str
    estimator: type[DebiasEstimator]
    grid: Settings = ({},)
    quick_grid: Settings | None = None
    fit_on: Literal["external", "train"] = "external"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    epochs: Mapping[str, int] = field(default_factory=dict)
    ablation_of: str | None = None

    @property
    def needs_attribute(self) -> bool:
        """Whether the fitted method needs each sample's group at prediction time."""
        return bool(self.estimator.needs_attribute_at_prediction)

    def parameters(self) -> list[str]:
        """The parameters a setting (``params``, a grid) may set."""
        names = self.estimator().get_params(deep=False)
        return sorted(n for n in names if n not in SET_BY_RUN and n not in self.fixed)

    def check(self, params: Mapping[str, Any], where: str = "params") -> None:
        """Raise :class:`InputError` naming the first key of ``params`` the method does not take."""
        valid = self.parameters()
        for key in params:
            if key not in valid:
                raise InputError(
                    f"{where}: unknown parameter {key!r} of method {self.name!r}; valid: {', '.join(valid)}"
                )

    def settings(self, quick: bool = False) -> list[dict[str, Any]]:
        """The validation grid (``quick``: the smaller one)."""
        grid = self.quick_grid if quick and self.quick_grid is not None else self.grid
        return [dict(s) for s in grid]

    def build(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        attribute: str | None = None,
        seed: int = 0,
        bias_loss: str | None = None,
        epochs: int | None = None,
        train_config: Mapping[str, Any] | None = None,
    ) -> DebiasEstimator:
        """An unfitted estimator: the estimator's defaults (an estimator with ``from_train_config``
        starts from ``train_config``, the ERM run's schedule), then the run's ``attribute``,
        ``seed``, ``bias_loss`` and ``epochs`` (``None``: the estimator's own), then ``params``,
        then the fixed parameters."""
        params = dict(params or {})
        self.check(params)
        from_config = getattr(self.estimator, "from_train_config", None)
        estimator = (
            from_config(train_config) if from_config and train_config is not None else self.estimator()
        )
        run = {"attribute": attribute, "seed": seed, "bias_loss": bias_loss}
        if epochs is not None:
            run.update({name: k * epochs for name, k in self.epochs.items()})
        accepted = estimator.get_params(deep=False)
        run = {k: v for k, v in run.items() if k in accepted and v is not None}
        return clone(estimator).set_params(**{**run, **params, **self.fixed})

    def fit(
        self,
        estimator: DebiasEstimator,
        model: nn.Module,
        fit_set: GroupedSet,
        val_set: GroupedSet | None = None,
    ) -> DebiasEstimator:
        """Fit ``estimator`` from ``model`` on ``fit_set`` (the split :attr:`fit_on` names); a
        method fitting on ``train`` also gets ``val_set``."""
        if self.fit_on == "train":
            return estimator.fit(model, fit_set, val_set)
        return estimator.fit(model, fit_set)


_STEP_EPOCHS = {"unlearn_epochs": 1, "n_epochs": 1}
_SWIFT_GRID = (
    {"lr_forget": 1e-4, "lr_base": 1e-3, "batch_size": 64},  # the published defaults
    *({"lr_forget": a, "lr_base": b, "batch_size": 16} for a in (1e-4, 1e-3, 1e-2) for b in (1e-2, 1e-1)),
)

# External sets are small (tens to hundreds of images), so most settings use batches of 16 to get
# more than one optimiser step per epoch. Fine-tuning gets 2 × epochs: the budget of SWiFT's two steps.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "swift",
            SWiFT,
            grid=_SWIFT_GRID,
            quick_grid=tuple({"lr_forget": 1e-3, "lr_base": b, "batch_size": 16} for b in (1e-2, 1e-1)),
            epochs=_STEP_EPOCHS,
        ),
        Method("swift_nomask", SWiFT, fixed={"use_mask": False}, epochs=_STEP_EPOCHS, ablation_of="swift"),
        Method(
            "swift_step1_only", SWiFT, fixed={"head_step": False}, epochs=_STEP_EPOCHS, ablation_of="swift"
        ),
        Method(
            "finetune",
            FineTune,
            grid=tuple({"lr": lr, "batch_size": 16} for lr in (1e-4, 1e-3, 1e-2)),
            quick_grid=tuple({"lr": lr, "batch_size": 16} for lr in (1e-3, 1e-2)),
            fixed={"fair": False},
            epochs={"epochs": 2},
        ),
        Method(
            "finetune_fair",
            FineTune,
            grid=tuple({"lr": lr, "lam": lam, "batch_size": 16} for lr in (1e-3, 1e-2) for lam in (1.0, 3.0)),
            quick_grid=tuple({"lr": lr, "lam": 1.0, "batch_size": 16} for lr in (1e-3, 1e-2)),
            fixed={"fair": True},
            epochs={"epochs": 2},
        ),
        Method(
            "bmft",
            BMFT,
            grid=tuple({"lr_forget": a, "lr_base": 1e-1, "batch_size": 16} for a in (1e-3, 1e-2)),
            quick_grid=({"lr_forget": 1e-3, "lr_base": 1e-1, "batch_size": 16},),
            epochs=_STEP_EPOCHS,
        ),
        Method(
            "fairprune",
            FairPrune,
            grid=tuple({"prune_ratio": k, "beta": b} for k in (0.01, 0.03, 0.1) for b in (0.5, 1.0)),
            quick_grid=tuple({"prune_ratio": k, "beta": 0.5} for k in (0.01, 0.05)),
        ),
        Method("retrain_fair", RetrainFair, grid=({"lam": 1.0},), fit_on="train"),
        Method("group_thresholds", GroupThresholds, grid=({"constraints": "equalized_odds"},)),
    )
}
"""Every registered method, in the order of tables."""


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a name already taken is an error); returns it."""
    if method.name in METHODS:
        raise ValueError(f"a debiasing method named {method.name!r} is already registered")
    if method.ablation_of is not None and method.ablation_of not in METHODS:
        raise ValueError(f"{method.name}: ablation of unknown method {method.ablation_of!r}")
    METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The registered method names, in table order."""
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name`` (an unknown name is an :class:`InputError` listing them)."""
    if name not in METHODS:
        raise InputError(f"unknown debiasing method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def check_settings(grids: Mapping[str, Sequence[Mapping[str, Any]]], where: str = "grids") -> None:
    """Raise :class:`InputError` for a grid of an unknown method or a setting with an unknown parameter."""
    for name, grid in grids.items():
        method = get_method(name)
        for setting in grid:
            method.check(setting, where=f"{where}.{name}")
