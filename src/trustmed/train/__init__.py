"""One Accelerate training loop used by every method (ERM, fine-tuning, debiasing, distillation, coVAE)."""

from trustmed.train.loop import FitResult, fit, make_accelerator, predict

__all__ = ["FitResult", "fit", "make_accelerator", "predict"]
