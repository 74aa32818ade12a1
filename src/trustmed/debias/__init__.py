"""Post-hoc debiasing: SWiFT (soft-mask weight fine-tuning, arXiv 2508.18826) and its baselines.

Every method takes a trained classifier and a small labelled external set with the sensitive
attribute (:class:`GroupedSet`) and is a scikit-learn estimator:
``Method(...).fit(model, external_set)`` sets ``model_`` and ``cost_``. The methods are registered
once (:mod:`trustmed.debias.registry`); :mod:`trustmed.debias.run` is the pipeline the command line,
the demo and the benchmark call.
"""

from trustmed.debias.base import DebiasEstimator
from trustmed.debias.bmft import BMFT
from trustmed.debias.data import GroupedSet, balanced_indices, load_grouped_sets, predict_proba, subsample
from trustmed.debias.fairprune import FairPrune
from trustmed.debias.finetune import FineTune
from trustmed.debias.importance import fisher_importance, hard_mask, soft_mask
from trustmed.debias.losses import bias_loss, wbce
from trustmed.debias.registry import METHODS, Method, get_method, method_names, register
from trustmed.debias.retrain import RetrainFair
from trustmed.debias.selection import Comparison, compare_methods
from trustmed.debias.swift import SWiFT
from trustmed.debias.tables import comparison_table, dominating_methods, pareto_figure
from trustmed.debias.thresholds import GroupThresholds

__all__ = [
    "BMFT",
    "METHODS",
    "Comparison",
    "DebiasEstimator",
    "FairPrune",
    "FineTune",
    "GroupThresholds",
    "GroupedSet",
    "Method",
    "RetrainFair",
    "SWiFT",
    "balanced_indices",
    "bias_loss",
    "compare_methods",
    "comparison_table",
    "dominating_methods",
    "fisher_importance",
    "get_method",
    "hard_mask",
    "load_grouped_sets",
    "method_names",
    "pareto_figure",
    "predict_proba",
    "register",
    "soft_mask",
    "subsample",
    "wbce",
]
