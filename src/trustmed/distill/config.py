"""The distillation settings that the losses, the trainer and ``trustmed distill`` share, each with its
one default (:class:`~trustmed.distill.run.DistillConfig` nests them)."""

from __future__ import annotations

from trustmed.config import Config

__all__ = ["LossConfig", "TrainConfig"]


class LossConfig(Config):
    """Hyper-parameters of the losses (:mod:`trustmed.distill.losses`)."""

    temperature: float = 4.0
    alpha: float = 0.9
    eta: float = 0.01
    adjustment: float = 0.0


class TrainConfig(Config):
    """Optimisation (AdamW); ``resume`` continues from the run folder's ``checkpoints``."""

    epochs: int = 15
    lr: float = 3e-3
    weight_decay: float = 1e-4
    resume: bool = False
