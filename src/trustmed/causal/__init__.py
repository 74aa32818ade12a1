"""Causal representation learning: Stein Hessian estimators, SCORE ordering and coVAE.

SCORE: "Score matching enables causal discovery of nonlinear additive noise models" (Rolland et al.,
arXiv 2203.04413). coVAE: "A Causal Ordering Prior for Unsupervised Representation Learning" (Kori et
al., arXiv 2307.05704). :mod:`trustmed.causal.pipeline` is the one path from data to a fitted, scored
and saved coVAE.
"""

from trustmed.causal.covae import (
    AlphaSchedule,
    CoVAE,
    CoVAEConfig,
    encode,
    ordering_loss,
    permute_latents,
    reconstruct,
    reorder_by_score,
)
from trustmed.causal.ordering import full_dag_from_order, prune_order, score_order
from trustmed.causal.pipeline import (
    CausalDataConfig,
    CausalFitConfig,
    CausalModelConfig,
    CausalTrainConfig,
    CovaeFit,
    fit_covae,
    fit_pipeline,
    load_covae,
    save_covae,
)
from trustmed.causal.stein import (
    median_bandwidth,
    nested_hessian_diag,
    nested_residual_leafness,
    stein_hessian_diag,
    stein_score,
)

__all__ = [
    "AlphaSchedule",
    "CausalDataConfig",
    "CausalFitConfig",
    "CausalModelConfig",
    "CausalTrainConfig",
    "CoVAE",
    "CoVAEConfig",
    "CovaeFit",
    "encode",
    "fit_covae",
    "fit_pipeline",
    "full_dag_from_order",
    "load_covae",
    "median_bandwidth",
    "nested_hessian_diag",
    "nested_residual_leafness",
    "ordering_loss",
    "permute_latents",
    "prune_order",
    "reconstruct",
    "reorder_by_score",
    "save_covae",
    "score_order",
    "stein_hessian_diag",
    "stein_score",
]
