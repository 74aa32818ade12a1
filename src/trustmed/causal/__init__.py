"""Causal representation learning: Stein Hessian estimators, SCORE ordering and coVAE.

SCORE: "Score matching enables causal discovery of nonlinear additive noise models" (Rolland et al.,
arXiv 2203.04413). coVAE: "A Causal Ordering Prior for Unsupervised Representation Learning" (Kori et
al., arXiv 2307.05704).
"""

from trustmed.causal.covae import (
    AlphaSchedule,
    CoVAE,
    CoVAEConfig,
    encode,
    fit_covae,
    ordering_loss,
    permute_latents,
    reconstruct,
)
from trustmed.causal.ordering import full_dag_from_order, prune_order, score_order
from trustmed.causal.stein import (
    median_bandwidth,
    nested_hessian_diag,
    nested_residual_leafness,
    stein_hessian_diag,
    stein_score,
)

__all__ = [
    "AlphaSchedule",
    "CoVAE",
    "CoVAEConfig",
    "encode",
    "fit_covae",
    "full_dag_from_order",
    "median_bandwidth",
    "nested_hessian_diag",
    "nested_residual_leafness",
    "ordering_loss",
    "permute_latents",
    "prune_order",
    "reconstruct",
    "score_order",
    "stein_hessian_diag",
    "stein_score",
]
