"""Post-hoc debiasing: SWiFT (soft-mask weight fine-tuning, arXiv 2508.18826) and its baselines.

Every method takes a trained classifier and a small labelled external set with the sensitive
attribute (:class:`GroupedSet`) and is scikit-learn shaped: ``Method(...).fit(model, external_set)``
sets ``model_`` and ``cost_``.
"""

from trustmed.debias.baselines import GroupThresholds, RetrainFair
from trustmed.debias.bmft import BMFT
from trustmed.debias.fairprune import FairPrune
from trustmed.debias.finetune import FineTune, GroupedSet, balanced_indices
from trustmed.debias.importance import fisher_importance, hard_mask, soft_mask
from trustmed.debias.losses import bias_loss, wbce
from trustmed.debias.swift import SWiFT

__all__ = [
    "BMFT",
    "FairPrune",
    "FineTune",
    "GroupThresholds",
    "GroupedSet",
    "RetrainFair",
    "SWiFT",
    "balanced_indices",
    "bias_loss",
    "fisher_importance",
    "hard_mask",
    "soft_mask",
    "wbce",
]
