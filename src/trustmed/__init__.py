"""trustmed: trustworthy medical-imaging models.

Fairness audits with bootstrap confidence intervals, post-hoc debiasing (SWiFT) against its
baselines, group-robust distillation (GroupDistil), phrase grounding with a latent diffusion
model's cross-attention, and causal representation learning (coVAE).
"""

from trustmed.errors import InputError

__all__ = ["InputError", "__version__"]
__version__ = "0.1.0"
